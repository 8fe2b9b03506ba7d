"""CSV, MLflow and W&B as this project builds them: named after the run dir, W&B offline unless this machine is logged
in, and each continuing the run it holds when a run is resumed (`resume_from`: the checkpoint); docs/outputs.md says
what each keeps of an interrupted launch. MLflow and W&B are optional extras: nothing here imports them."""

import csv
import importlib.util
import netrc
import os
import socket
import sys
from contextlib import contextmanager, suppress
from pathlib import Path
from urllib.parse import urlparse

from pytorch_lightning import loggers
from pytorch_lightning.loggers.csv_logs import ExperimentWriter
from pytorch_lightning.utilities import rank_zero_only

from cvae.errors import ConfigError

# metrics.csv of the launches before a resume, moved aside until the resume has written them back with its own
# rows: a resume killed before that finds them here
EARLIER_ROWS = ".metrics.before-resume.csv"


class ContinuedCSVLogger(loggers.CSVLogger):
    """Lightning's CSVLogger, which starts metrics.csv anew whenever it opens a dir; resuming (`resume_from`), the
    earlier launches' rows are kept: written back before the resumed run's first row, less those the resumed run
    logs again (from its first row's epoch and step on: what the interrupted launch logged after the checkpoint)."""

    def __init__(self, save_dir: str, resume_from: str | None = None, **kwargs):
        super().__init__(save_dir, **kwargs)
        self.earlier = set_earlier_rows_aside(Path(self.log_dir)) if resume_from else None

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        if self.earlier:
            # the rows this run does not log again: before a training row, those of earlier steps or of earlier epochs
            # (an epoch's last points share the step of the next epoch's first batch); before any other row, all
            epoch = metrics.get("epoch")
            for row in self.earlier:
                if epoch is None or step is None or row["step"] < step or row.get("epoch", epoch) < epoch:
                    super().log_metrics({key: value for key, value in row.items() if key != "step"}, step=row["step"])
            self.earlier = []
        super().log_metrics(metrics, step)

    @rank_zero_only
    def save(self) -> None:
        super().save()
        if self.earlier == []:  # written back: the copy set aside is no longer needed
            (Path(self.log_dir) / EARLIER_ROWS).unlink(missing_ok=True)
            self.earlier = None


@rank_zero_only
def set_earlier_rows_aside(log_dir: Path) -> list[dict]:
    """The rows of metrics.csv (moved to EARLIER_ROWS, where Lightning's writer, which deletes metrics.csv, does
    not look), values as numbers."""
    current, aside = log_dir / ExperimentWriter.NAME_METRICS_FILE, log_dir / EARLIER_ROWS
    if current.is_file() and not aside.is_file():
        os.replace(current, aside)
    if not aside.is_file():
        return []
    with open(aside, newline="") as file:
        return [{key: number(value) for key, value in row.items() if value != ""} for row in csv.DictReader(file)]


def number(text: str) -> int | float | str:
    for kind in (int, float):
        with suppress(ValueError):
            return kind(text)
    return text


class MLFlowLogger(loggers.MLFlowLogger):
    """Lightning's MLFlowLogger, the run named after its dir (MLflow's own names repeat across seeded runs) and
    the dir in its `run_dir` tag; resuming, the MLflow run that tag names continues (its run id)."""

    def __init__(
        self,
        run_dir: str,
        run_name: str | None = None,
        tags: dict | None = None,
        resume_from: str | None = None,
        **kwargs,
    ):
        check_reachable(kwargs.get("tracking_uri"), "logger.mlflow.tracking_uri")
        require_extra("mlflow")
        if resume_from and not kwargs.get("run_id"):
            kwargs["run_id"] = mlflow_run_of(run_dir, kwargs.get("tracking_uri"), kwargs.get("experiment_name"))
        super().__init__(run_name=run_name or run_label(run_dir), tags={"run_dir": run_dir, **(tags or {})}, **kwargs)


def mlflow_run_of(run_dir: str, tracking_uri: str | None, experiment_name: str | None) -> str | None:
    """The id of the newest MLflow run tagged with this run dir, None if the store holds none."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name or "lightning_logs")  # MLFlowLogger's default
    if experiment is None:
        return None
    quote = '"' if "'" in run_dir else "'"
    runs = client.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.run_dir = {quote}{run_dir}{quote}",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    return runs[0].info.run_id if runs else None


class WandbLogger(loggers.WandbLogger):
    """Lightning's WandbLogger in the mode WANDB_MODE names, else online when this machine is logged in to W&B and
    offline otherwise: a run never stops to ask for a login. Resuming, the W&B run of this dir continues (same id;
    WandbLogger asks W&B for resume="allow")."""

    def __init__(self, save_dir: str, name: str | None = None, resume_from: str | None = None, **kwargs):
        require_extra("wandb")
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
        if resume_from and not (kwargs.get("id") or kwargs.get("version")):
            # the newest launch's: W&B names each launch's folder `[offline-]run-<date>_<time>-<run id>` (it keeps no
            # other record of the id on disk that is meant to be read)
            launches = sorted(Path(save_dir, "wandb").glob("*run-*-*"), key=lambda path: path.name.split("run-", 1)[1])
            kwargs["id"] = launches[-1].name.rsplit("-", 1)[1] if launches else None
        super().__init__(save_dir=save_dir, name=name or run_label(save_dir), mode=mode, **kwargs)


def check_reachable(uri: str | None, key: str, seconds: float = 5.0) -> None:
    """A tracking server that does not answer: one line within seconds (MLflow's client retries for minutes)."""
    address = urlparse(uri or "")
    if address.scheme not in ("http", "https") or not address.hostname:
        return  # a local file store, or MLflow's default
    port = address.port or (443 if address.scheme == "https" else 80)
    try:
        socket.create_connection((address.hostname, port), timeout=seconds).close()
    except OSError as error:
        raise ConfigError(
            f"{key}={uri} does not answer ({error.strerror or error}); start the server, or leave out {key} to log "
            f"into outputs/mlflow.db"
        ) from None


def run_label(run_dir: str) -> str:
    """A run's dir below outputs/ (`multirun/<date>/<time>/<job>`), else the whole dir."""
    parts = Path(run_dir).parts
    return "/".join(parts[len(parts) - parts[::-1].index("outputs") :]) if "outputs" in parts else run_dir


def wandb_logged_in() -> bool:
    """An API key in WANDB_API_KEY or in the netrc file `wandb login` writes."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def require_extra(package: str) -> None:
    """Before the run starts: a logger whose package is missing is a one-line error saying how to install it."""
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f'logger={package} needs the {package} package: pip install -e ".[{package}]"')


@contextmanager
def wandb_run_closed():
    """Close the W&B run when the job ends, marked failed when it failed: W&B keeps one run per process, and the
    next job of a multirun would log into this one."""
    exit_code = 1
    try:
        yield
        exit_code = 0
    finally:
        wandb = sys.modules.get("wandb")  # imported only when a WandbLogger started a run
        if wandb is not None and wandb.run is not None:
            wandb.finish(exit_code=exit_code)
