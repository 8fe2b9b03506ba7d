"""Small helpers the entry points share: building config groups, writing results safely, printing them."""

import json
import os
import tempfile
from pathlib import Path

from hydra.utils import instantiate
from omegaconf import DictConfig


def instantiate_group(group: DictConfig | None) -> list:
    """Objects of a config group whose entries each hold a `_target_` (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def write_json_atomic(path: str | Path, data: dict) -> None:
    """Write JSON to a temporary file beside `path`, then rename: readers never see a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=f".{path.name}.", delete=False) as tmp:
        try:
            json.dump(data, tmp, indent=2, sort_keys=True)
            tmp.write("\n")
            tmp.flush()
            os.fsync(tmp.fileno())
        except BaseException:
            os.unlink(tmp.name)
            raise
    os.chmod(tmp.name, 0o644)  # NamedTemporaryFile makes it private; results are for everyone who reads the run
    os.replace(tmp.name, path)


def format_table(metrics: dict) -> str:
    """A markdown table of metric names and values."""
    shown = {name: f"{value:.4f}" if isinstance(value, float) else str(value) for name, value in metrics.items()}
    name_width = max(len("metric"), *map(len, shown))
    value_width = max(len("value"), *map(len, shown.values()))
    rows = [
        f"| {'metric':<{name_width}} | {'value':>{value_width}} |",
        f"|{'-' * (name_width + 2)}|{'-' * (value_width + 1)}:|",
    ]
    rows += [f"| {name:<{name_width}} | {value:>{value_width}} |" for name, value in shown.items()]
    return "\n".join(rows)
