"""Resume policy: what a training launch does with its run dir (launch_decision), that it continues only the same
run (check_resumable), and what a resume changed, recorded in the run dir's resumes.json."""

import os
from pathlib import Path
from typing import NamedTuple

from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities import rank_zero_only

from cvae.callbacks.record import RunRecord
from cvae.errors import CheckpointError
from cvae.files import read_json, shown, write_json_atomic
from cvae.model.checkpoint import read_checkpoint
from cvae.run.rundir import holds_results

# What may differ between a run and its resume: where things go and what is shown or measured, not what is
# trained (max_epochs: a resume may train on for longer).
NOT_TRAINING = (
    *("ckpt_path", "resume", "paths", "hydra", "logger", "callbacks", "sampler", "task_name", "optimized_metric"),
    *("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.default_root_dir"),
    *("trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps"),
    *("trainer.limit_val_batches", "trainer.limit_test_batches", "trainer.check_val_every_n_epoch"),
    *("data.data_dir", "data.download", "data.num_workers", "data.eval_batch_size", "model.compile"),
)


def check_resumable(path: str | Path, cfg: DictConfig) -> dict[str, dict]:
    """Refuse, before training starts, a resume of another network, or of other training settings unless
    resume.allow_changes. Returns the changed settings, {key: {"checkpoint": value, "now": value}}, for the record."""
    checkpoint = read_checkpoint(path)
    saved, asked = checkpoint["hyper_parameters"]["net"], OmegaConf.to_container(cfg.model.net, resolve=True)
    differing = [key for key in {**saved, **asked} if saved.get(key) != asked.get(key)]
    if differing:
        raise CheckpointError(
            f"{path} holds a model with {describe(saved, differing)} but the config asks for "
            f"{describe(asked, differing)}; resume with the overrides the run was started with"
        )
    callbacks = checkpoint.get("callbacks")
    recorded = callbacks.get(RunRecord.__qualname__) if isinstance(callbacks, dict) else None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("settings"), dict):
        return {}  # written before runs recorded their settings: only the network can be compared
    saved, asked = recorded["settings"], training_settings(cfg)
    changed = changed_settings(saved, asked)
    if changed and not OmegaConf.select(cfg, "resume.allow_changes", default=False):
        raise CheckpointError(
            f"{path} is of a run with {describe(saved, changed)} but this launch asks for "
            f"{describe(asked, changed)}: a resume continues the same run. Resume with the run's own values, or "
            f"pass resume.allow_changes=true to continue it changed (recorded in the run dir's resumes.json)"
        )
    return {key: {"checkpoint": saved.get(key), "now": asked.get(key)} for key in changed}


def changed_settings(saved: dict, asked: dict) -> list[str]:
    return [key for key in sorted({**saved, **asked}) if saved.get(key, "<unset>") != asked.get(key, "<unset>")]


def describe(settings: dict, keys: list[str]) -> str:
    return ", ".join(f"{key}={settings.get(key, '<unset>')}" for key in keys)


def training_settings(node: DictConfig | dict, prefix: str = "") -> dict:
    """Every setting that changes what is trained, by dotted key (NOT_TRAINING left out): a config's values
    resolved, or a record's (a plain dict read from .hydra/) as written."""
    settings = {}
    for key in node:
        dotted = f"{prefix}{key}"
        if dotted in NOT_TRAINING:
            continue
        value = node[key]
        if isinstance(value, DictConfig | dict):
            settings.update(training_settings(value, f"{dotted}."))
        else:
            settings[dotted] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_list(value) else value
    return settings


def recorded_config(directory: Path) -> dict | None:
    """The task config the run was started with, as Hydra saved it, nothing resolved; None for a run without one."""
    record = directory / ".hydra" / "config.yaml"
    return OmegaConf.to_container(OmegaConf.load(record), resolve=False) if record.is_file() else None


def check_same_run(directory: Path, cfg: DictConfig) -> None:
    """A finished run is kept only for a launch of its own settings: its last checkpoint's, else its .hydra/ record's
    (another run's finished dir is refused as a resume of it would be)."""
    last = directory / "checkpoints" / "last.ckpt"
    if last.is_file():
        check_resumable(last, cfg)
        return
    recorded = recorded_config(directory)
    if recorded is None:
        raise CheckpointError(
            f"{directory} holds a finished run without a checkpoint or .hydra/ record; choose a new dir"
        )
    saved, asked = training_settings(recorded), training_settings(OmegaConf.to_container(cfg, resolve=False))
    changed = changed_settings(saved, asked)
    if changed:
        raise CheckpointError(
            f"{directory} holds a finished run with {describe(saved, changed)} but this launch asks for "
            f"{describe(asked, changed)}; run with the run's own overrides, or choose a new dir"
        )


def epochs_asked_beyond(directory: Path, cfg: DictConfig) -> bool:
    """More epochs than the finished run trained and than it was started for (one early stopping ended is finished)?"""
    trained = (read_json(directory / "metrics.json") or {}).get("epochs")
    started_for = ((recorded_config(directory) or {}).get("trainer") or {}).get("max_epochs")
    asked = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    known = [epochs for epochs in (trained, started_for) if isinstance(epochs, int)]
    return isinstance(asked, int) and bool(known) and asked > max(known)


START, RESUME, FINISHED, REFUSE = "start", "resume", "finished", "refuse"


class Decision(NamedTuple):
    action: str  # START, RESUME (from ckpt_path), FINISHED (keep the run as it is, do nothing) or REFUSE
    ckpt_path: str | None  # what to train from: the checkpoint resumed, or one named to start a new run from
    reason: str = ""  # why REFUSE, when the dir's contents alone do not say it


def launch_decision(directory: str | Path, cfg: DictConfig) -> Decision:
    """What a training launch does with its run dir, from its files (no checkpoint is read). With resume.auto=true or
    in a requeued SLURM job, a run with metrics.json is FINISHED unless asked for more epochs; last.ckpt resumes."""
    directory = Path(directory)
    ckpt_path = cfg.get("ckpt_path")
    finished = (directory / "metrics.json").is_file()
    last = directory / "checkpoints" / "last.ckpt"
    taken = bool(holds_results(directory))
    if ckpt_path:
        inside = Path(str(ckpt_path)).resolve().is_relative_to(directory.resolve())
        return Decision(RESUME if inside else REFUSE if taken else START, str(ckpt_path))
    auto = OmegaConf.select(cfg, "resume.auto", default=False) or int(os.environ.get("SLURM_RESTART_COUNT") or 0)
    if auto and finished and not epochs_asked_beyond(directory, cfg):
        return Decision(FINISHED, None)
    if auto and last.is_file():
        return Decision(RESUME, str(last))
    if auto and finished:
        return Decision(REFUSE, None, "it finished without a checkpoints/last.ckpt to train on from")
    return Decision(REFUSE if taken else START, None)


@rank_zero_only
def record_resume(output_dir: Path, ckpt_path: str, changed: dict) -> None:
    """Append this resume to the run dir's resumes.json: from which checkpoint, with which settings changed."""
    path = output_dir / "resumes.json"
    history = read_json(path) or {"resumes": []}
    history["resumes"].append({"ckpt_path": str(Path(ckpt_path).resolve()), "changed": changed})
    write_json_atomic(path, history)
    if changed:
        print(f"resuming with changed settings ({', '.join(changed)}), as resume.allow_changes=true; see {shown(path)}")
