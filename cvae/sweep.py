"""Sweep summaries: one table of a multirun's members (overrides, final metrics, epochs, wall time), written to
<sweep dir>/summary.csv and printed as markdown. The Hydra callback registered in conf/hydra/default.yaml writes
it after every multirun; for any existing sweep dir (also one still running or one that failed):

    python -m cvae.sweep outputs/multirun/<date>/<time>

Kept free of torch so that Hydra, which builds its callbacks at start-up, stays quick to start.
"""

import atexit
import csv
import io
import json
import os
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SUMMARY_FILE = "summary.csv"
# final metrics, in this order; a column appears when some member's metrics.json has it
METRIC_COLUMNS = ("val/nelbo", "test/nelbo", "val/fid", "test/fid", "val/label_acc", "test/label_acc")


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def member_dirs(sweep_dir: Path) -> list[Path]:
    """The sweep's members: subdirs Hydra started a job in (.hydra/) or that hold results, by job number."""
    members = [
        path
        for path in sweep_dir.iterdir()
        if path.is_dir() and ((path / ".hydra").is_dir() or (path / "metrics.json").is_file())
    ]
    return sorted(members, key=lambda path: (0, int(path.name)) if path.name.isdigit() else (1, path.name))


def member_overrides(member: Path) -> str:
    overrides_file = member / ".hydra" / "overrides.yaml"
    return " ".join(OmegaConf.load(overrides_file)) if overrides_file.is_file() else ""


def member_row(member: Path) -> dict:
    """A member's line of the table; without metrics.json its run did not finish, so it counts as failed."""
    metrics = read_json(member / "metrics.json") or {}
    timing = read_json(member / "timing.json") or {}
    return {
        "member": member.name,
        "status": "ok" if metrics else "failed",
        "overrides": member_overrides(member),
        **{name: metrics[name] for name in METRIC_COLUMNS if name in metrics},
        "epochs": metrics.get("epochs"),
        "wall_seconds": timing.get("wall_seconds"),
    }


def summary_table(sweep_dir: Path) -> tuple[list[str], list[dict]]:
    rows = [member_row(member) for member in member_dirs(sweep_dir)]
    metric_columns = [name for name in METRIC_COLUMNS if any(name in row for row in rows)]
    return ["member", "status", "overrides", *metric_columns, "epochs", "wall_seconds"], rows


def shown(value) -> str:
    if value is None:
        return ""
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def as_csv(columns: list[str], rows: list[dict]) -> str:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows({name: shown(row.get(name)) for name in columns} for row in rows)
    return text.getvalue()


def as_markdown(columns: list[str], rows: list[dict]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(shown(row.get(name)) for name in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_summary(sweep_dir: str | Path) -> Path:
    """Write <sweep dir>/summary.csv (replaced in one step: readers never see half a table) and print the table."""
    sweep_dir = Path(sweep_dir)
    columns, rows = summary_table(sweep_dir)
    path = sweep_dir / SUMMARY_FILE
    partial = path.with_name(f".{SUMMARY_FILE}.{os.getpid()}")
    partial.write_text(as_csv(columns, rows))
    os.replace(partial, path)
    print(f"\nSweep summary ({path}):\n{as_markdown(columns, rows)}\n")
    return path


class SweepSummary(Callback):
    """Hydra callback: the summary of a multirun once its members are done, failed members included."""

    def __init__(self):
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)
        # When a member fails, Hydra's sweeper re-raises its error and skips on_multirun_end: the table, failed
        # members in it, is then written as the process exits.
        atexit.register(self.summarize_once)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        self.summarize_once()

    def summarize_once(self) -> None:
        sweep_dir, self.sweep_dir = self.sweep_dir, None
        if sweep_dir is not None and sweep_dir.is_dir():
            write_summary(sweep_dir)


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python -m cvae.sweep <sweep dir>   (e.g. outputs/multirun/<date>/<time>)", file=sys.stderr)
        return 2
    if not member_dirs(Path(argv[0])):
        print(f"{argv[0]} holds no sweep members (subdirs with .hydra/ or metrics.json)", file=sys.stderr)
        return 1
    write_summary(argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
