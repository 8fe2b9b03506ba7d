"""Sweep summaries (docs/sweeps.md), written after every multirun by SweepSummary or for any sweep dir by
`python -m cvae.run.sweep outputs/multirun/<date>/<time>`. Free of torch: Hydra builds its callbacks at start-up."""

import atexit
import csv
import io
import itertools
import sys
import time
from pathlib import Path

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from cvae.callbacks import PRUNED_FILE
from cvae.files import read_json, shown, write_bytes_atomic
from cvae.loggers import FINAL_METRICS
from cvae.metrics import figure

SUMMARY_FILE, MARKDOWN_FILE, PLOT_FILE = "summary.csv", "summary.md", "summary.png"


def member_order(path: Path) -> tuple:
    return (0, int(path.name)) if path.name.isdigit() else (1, path.name)


def launched_jobs(sweep_dir: Path) -> list[list[str]]:
    """Each job's overrides, by job number, as Hydra's basic sweeper expands the sweep saved in multirun.yaml: also
    members that never got a folder (cancelled before they started). Empty for another sweeper (Optuna's)."""
    saved = sweep_dir / "multirun.yaml"
    if not saved.is_file():
        return []
    hydra = OmegaConf.to_container(OmegaConf.load(saved), resolve=False).get("hydra") or {}  # as data: no resolving
    sweeper = hydra.get("sweeper") or {}
    if sweeper.get("_target_") != f"{BasicSweeper.__module__}.{BasicSweeper.__name__}":
        return []
    params = [f"{key}={value}" for key, value in (sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create().parse_overrides([*params, *(hydra.get("overrides") or {}).get("task", [])])
    return [job for batch in BasicSweeper.split_arguments(overrides, None) for job in batch]


def sweep_members(sweep_dir: Path) -> list[tuple[Path, list[str]]]:
    """Every member launched, and any other subdir with .hydra/ or metrics.json, with its overrides, by job number."""
    members = {}
    for path in sweep_dir.iterdir():
        if path.is_dir() and ((path / ".hydra").is_dir() or (path / "metrics.json").is_file()):
            overrides = path / ".hydra" / "overrides.yaml"
            members[path] = (
                OmegaConf.to_container(OmegaConf.load(overrides), resolve=False) if overrides.is_file() else []
            )
    for number, overrides in enumerate(launched_jobs(sweep_dir)):
        members.setdefault(sweep_dir / str(number), overrides)
    return sorted(members.items(), key=lambda item: member_order(item[0]))


def member_row(member: Path, overrides: list[str]) -> dict:
    """A member's line of the table; without metrics.json its run did not finish, so it counts as failed."""
    metrics = read_json(member / "metrics.json") or {}
    timing, pruned = read_json(member / "timing.json") or {}, read_json(member / PRUNED_FILE)
    return {
        "member": member.name,
        "status": f"pruned at epoch {pruned['epoch']}" if metrics and pruned else "ok" if metrics else "failed",
        "overrides": " ".join(overrides),
        "knobs": dict(override.split("=", 1) for override in overrides if "=" in override),  # not a column
        **{name: metrics[name] for name in FINAL_METRICS if name in metrics},
        "epochs": metrics.get("epochs"),
        "wall_seconds": timing.get("wall_seconds"),
    }


def summary_table(sweep_dir: Path) -> tuple[list[str], list[dict]]:
    rows = [member_row(member, overrides) for member, overrides in sweep_members(sweep_dir)]
    metric_columns = [name for name in FINAL_METRICS if any(name in row for row in rows)]
    return ["member", "status", "overrides", *metric_columns, "epochs", "wall_seconds"], rows


def write_summary(sweep_dir: str | Path) -> Path:
    """Write summary.csv, summary.md and summary.png into the sweep dir (each replaced in one step); print the table."""
    sweep_dir = Path(sweep_dir)
    columns, rows = summary_table(sweep_dir)
    exact = [columns, *(["" if row.get(name) is None else row[name] for name in columns] for row in rows)]
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerows(exact)  # the data: every digit, accuracies as fractions
    path = sweep_dir / SUMMARY_FILE
    write_bytes_atomic(path, text.getvalue().encode())
    lines = [
        "| " + " | ".join(line) + " |"
        for line in [columns, *([figure(name, row.get(name)) for name in columns] for row in rows)]
    ]
    markdown = table = "\n".join([lines[0], "|" + "|".join("---" for _ in columns) + "|", *lines[1:]])
    plot = summary_figure(rows)
    if plot is not None:
        picture = io.BytesIO()
        plot.savefig(picture, format="png")
        write_bytes_atomic(sweep_dir / PLOT_FILE, picture.getvalue())
        markdown += f"\n\n![each final metric against each swept knob]({PLOT_FILE})"
    write_bytes_atomic(sweep_dir / MARKDOWN_FILE, f"# Sweep summary\n\n{markdown}\n".encode())
    print(f"\nSweep summary ({shown(path)}):\n{table}\n")
    return path


def as_number(text: str | None) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def summary_figure(rows: list[dict]):
    """A matplotlib Figure: each final metric (a row) against each swept knob (a column), one line per setting of the
    other swept knobs. None without a swept knob or a finished member."""
    from matplotlib.figure import Figure  # here: the Hydra callback imports this module at every start-up

    finished = [row for row in rows if row["status"] == "ok"]
    # the swept knobs: override keys whose values differ between the finished members, in command-line order
    keys = dict.fromkeys(key for row in finished for key in row["knobs"])
    knobs = [key for key in keys if len({row["knobs"].get(key) for row in finished}) > 1]
    metrics = [name for name in FINAL_METRICS if any(name in row for row in finished)]
    if not knobs or not metrics:
        return None
    figure = Figure(figsize=(4 * len(knobs), 3 * len(metrics)), layout="constrained")
    axes = figure.subplots(len(metrics), len(knobs), squeeze=False)
    for (row_index, metric), (column, knob) in itertools.product(enumerate(metrics), enumerate(knobs)):
        plot_metric(axes[row_index][column], finished, metric, knob, [other for other in knobs if other != knob])
    return figure


def plot_metric(ax, rows: list[dict], metric: str, knob: str, others: list[str]) -> None:
    values = sorted(
        {row["knobs"].get(knob) for row in rows},
        key=lambda value: (as_number(value) is None, as_number(value) or 0, str(value)),
    )
    numeric = all(as_number(value) is not None for value in values)
    position = {value: as_number(value) if numeric else index for index, value in enumerate(values)}
    lines = {}
    for row in rows:
        if metric in row:
            setting = ", ".join(f"{other}={row['knobs'].get(other)}" for other in others)
            lines.setdefault(setting, []).append((position[row["knobs"].get(knob)], row[metric]))
    for setting, points in lines.items():
        ax.plot(*zip(*sorted(points)), marker="o", label=setting or None)
    if not numeric:
        ax.set_xticks(list(position.values()), [str(value) for value in values])
    elif min(position.values()) > 0 and max(position.values()) >= 100 * min(position.values()):
        ax.set_xscale("log")
    ax.set_xlabel(knob)
    ax.set_ylabel(metric)
    if others:
        ax.legend(fontsize="small")


FAILED_SWEEPS: list[Path] = []  # sweeps of this process a member of which failed: train.py then exits with 1


class SweepSummary(Callback):
    """Hydra callback: the summary of a multirun once its members are done, failed members included."""

    sweep_dir: Path | None = None
    started = 0.0

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.sweep_dir, self.started = Path(config.hydra.sweep.dir), time.time()
        # When a member fails, Hydra's sweeper re-raises its error and skips on_multirun_end: the table, failed
        # members in it, is then written as the process exits.
        atexit.register(self.summarize_once)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        """The summary, then one line if a member this launch ran failed (each said its own line as it ended; a member
        an earlier, killed launch left unfinished is in the table, but not this launch's)."""
        sweep_dir = self.sweep_dir
        self.summarize_once()
        rows = summary_table(sweep_dir)[1] if sweep_dir else []
        # the failed members this launch ran: Hydra (re)wrote the files of their record after it started
        records = [(row["member"], sweep_dir / row["member"] / ".hydra") for row in rows if row["status"] == "failed"]
        failed = [name for name, record in records if any(f.stat().st_mtime >= self.started for f in record.glob("*"))]
        if failed:
            summary = sweep_dir / MARKDOWN_FILE
            line = f"error: {len(failed)} of {len(rows)} sweep members failed ({', '.join(failed)}); see {summary}"
            print(line, file=sys.stderr)
            FAILED_SWEEPS.append(sweep_dir)  # the entry point exits with 1 (here it would hide Hydra's own report)

    def summarize_once(self) -> None:
        sweep_dir, self.sweep_dir = self.sweep_dir, None
        if sweep_dir is not None and sweep_dir.is_dir() and sweep_members(sweep_dir):  # a refused sweep: no table
            write_summary(sweep_dir)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m cvae.run.sweep <sweep dir>   (e.g. outputs/multirun/<date>/<time>)", file=sys.stderr)
        return 2
    if not sweep_members(Path(argv[0])):
        print(f"{argv[0]} holds no sweep members (subdirs with .hydra/ or metrics.json)", file=sys.stderr)
        return 1
    write_summary(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
