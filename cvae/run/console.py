"""What train.py and evaluate.py print for a person: the run dir when they start, the files to open next when they
end, and none of the libraries' messages that say nothing about the run."""

import logging
import warnings
from collections.abc import Iterable
from pathlib import Path

from pytorch_lightning.utilities import rank_zero_only

from cvae.files import shown
from cvae.metrics import figure

# Lightning's rank-zero messages that are not about this run: an advert every Trainer without a LitLogger prints
LIGHTNING_NOISE = ("💡 Tip: For seamless cloud logging",)


def not_noise(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith(LIGHTNING_NOISE)


def silence_library_noise() -> None:
    """Warnings and tips the user can do nothing about. (The `limit_*_batches=1.0 was configured` lines are
    silenced at their source: conf/trainer/default.yaml leaves those limits unset.)"""
    # Lightning 2.6's CombinedLoader builds torch's LeafSpec, deprecated in torch 2.10+: once per fit, about
    # Lightning's code, not this project's
    warnings.filterwarnings(
        "ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated", category=FutureWarning
    )
    # A run dir holds one run (cvae.run.cli.RunDirCheck refuses any other): checkpoints already there are its own,
    # found on every resume into it
    for folder in ("Checkpoint directory", "Experiment logs directory"):  # ModelCheckpoint's, CSVLogger's
        warnings.filterwarnings("ignore", message=rf"{folder} .* exists and is not empty")
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(not_noise)  # added once: addFilter dedupes


@rank_zero_only
def announce_run_dir(task: str, output_dir: str | Path) -> None:
    print(f"{task}: writing to {shown(output_dir)}/", flush=True)


def metrics_table(metrics: dict) -> str:
    """A markdown table of metric names and their figures."""
    shown_values = {name: figure(name, value) for name, value in metrics.items()}
    name_width = max(len("metric"), *map(len, shown_values))
    value_width = max(len("value"), *map(len, shown_values.values()))
    rows = [
        f"| {'metric':<{name_width}} | {'value':>{value_width}} |",
        f"|{'-' * (name_width + 2)}|{'-' * (value_width + 1)}:|",
    ]
    rows += [f"| {name:<{name_width}} | {value:>{value_width}} |" for name, value in shown_values.items()]
    return "\n".join(rows)


@rank_zero_only
def announce_resume(ckpt_path: str | Path) -> None:
    print(f"resuming from {shown(ckpt_path)}", flush=True)


@rank_zero_only
def list_results(output_dir: str | Path, names: Iterable[str], tensorboard: bool, pictures: Iterable[str] = ()) -> None:
    """The files a user opens next (those that were written), the pictures the run drew (by tag, a line per folder),
    and the TensorBoard command for the dir."""
    output_dir = Path(output_dir)
    lines = [f"results in {shown(output_dir)}/:"]
    lines += [f"  {shown(output_dir / name)}" for name in names if (output_dir / name).exists()]
    folders: dict[str, list[str]] = {}
    for tag in pictures:
        folder, _, name = tag.rpartition("/")
        folders.setdefault(folder, []).append(name)
    if folders:
        lines.append("  pictures (TensorBoard's Images tab):" if tensorboard else "  pictures (the loggers' images):")
        lines += [f"    {folder}/: {', '.join(names)}" for folder, names in folders.items()]
    if tensorboard:
        lines.append(f"  tensorboard --logdir {shown(output_dir)}   # curves, pictures, HPARAMS, Projector")
    print("\n".join(lines), flush=True)
