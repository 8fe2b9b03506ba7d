"""The experiment trackers beyond Lightning's defaults: MLflow's and W&B's loggers named after the run dir, W&B
offline unless this machine is logged in to it, and W&B's run closed after each job. (Images in the form each
tracker takes: cvae/callbacks/images.py.)

MLflow and W&B are optional extras (`pip install -e ".[mlflow]"`, `".[wandb]"`); nothing here imports them.
"""

import importlib.util
import netrc
import os
import socket
import sys
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

from cvae.errors import ConfigError


def mlflow_logger(run_dir: str, run_name: str | None = None, tags: dict | None = None, **kwargs) -> MLFlowLogger:
    """Lightning's MLFlowLogger, the run named after its dir (MLflow's own names repeat across seeded runs) and
    the dir in its `run_dir` tag."""
    check_reachable(kwargs.get("tracking_uri"), "logger.mlflow.tracking_uri")
    require_extra("mlflow")
    return MLFlowLogger(run_name=run_name or run_label(run_dir), tags={"run_dir": run_dir, **(tags or {})}, **kwargs)


def wandb_logger(save_dir: str, name: str | None = None, **kwargs) -> WandbLogger:
    """Lightning's WandbLogger in the mode WANDB_MODE names, else online when this machine is logged in to W&B
    (an API key in WANDB_API_KEY or in the netrc file `wandb login` writes) and offline otherwise: a run never
    stops to ask for a login, and `wandb sync <run dir>/wandb/offline-run-*` uploads an offline run later."""
    require_extra("wandb")
    mode = os.environ.get("WANDB_MODE") or ("online" if wandb_logged_in() else "offline")
    return WandbLogger(save_dir=save_dir, name=name or run_label(save_dir), mode=mode, **kwargs)


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
    try:
        yield
    except BaseException:
        finish_wandb_run(exit_code=1)
        raise
    finish_wandb_run(exit_code=0)


def finish_wandb_run(exit_code: int) -> None:
    wandb = sys.modules.get("wandb")  # imported only when a WandbLogger started a run
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)
