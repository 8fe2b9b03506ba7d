"""What train.py and evaluate.py share around their work: config checks before anything starts, and bad input
reported as one line ("error: <what was wrong and how to fix it>") with exit status 1, not a traceback.

HYDRA_FULL_ERROR=1 shows the traceback instead. In a multirun the error is re-raised after its line, so that
Hydra records the member as failed and the sweep goes on with the others."""

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from cvae.errors import ConfigError, UsageError
from cvae.run.checks import check_config

log = logging.getLogger(__name__)
# what to pass for a key the config leaves mandatory (???)
MANDATORY_EXAMPLES = {"ckpt_path": "outputs/<date>/<time>/checkpoints/best.ckpt"}


def usage_error(error: BaseException) -> UsageError | None:
    """The UsageError behind an exception: itself, or what Hydra's instantiate or Lightning wrapped."""
    while error is not None:
        if isinstance(error, UsageError):
            return error
        error = error.__cause__ or error.__context__
    return None


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_task(task: Callable[[DictConfig], object], cfg: DictConfig, rules: dict):
    try:
        check_mandatory(cfg)
        check_config(cfg, rules)
        return task(cfg)
    except SIGTERMException:  # CheckpointOnInterrupt has saved the run and said how to resume it
        print("error: stopped by SIGTERM", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(128 + signal.SIGINT)
    except Exception as error:
        cause = usage_error(error)
        if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if in_multirun():
            log.error(str(cause))  # into the member's log; Hydra marks it failed and runs the others
            raise cause from None
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(1)


def check_mandatory(cfg: DictConfig) -> None:
    """Keys the config leaves for the command line (??? in the YAML) that it did not get."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        key = sorted(missing)[0]
        raise ConfigError(f"{key} is required: pass {key}={MANDATORY_EXAMPLES.get(key, '<value>')}")


class RunDirCheck(Callback):
    """Hydra callback: a run or sweep dir that cannot be created is said in one line, before Hydra tries to."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self.create(config.hydra.run.dir, "hydra.run.dir")

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self.create(config.hydra.sweep.dir, "hydra.sweep.dir")

    @staticmethod
    def create(directory: str, key: str) -> None:
        try:
            Path(directory).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(
                f"error: {key}={directory} cannot be created ({error.strerror}); choose a writable folder",
                file=sys.stderr,
            )
            sys.exit(1)
