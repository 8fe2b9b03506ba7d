"""What train.py and evaluate.py share around their work: config checks before anything starts, and bad input
reported as one line ("error: <what was wrong and how to fix it>") with exit status 1, not a traceback.

HYDRA_FULL_ERROR=1 shows the traceback instead. In a multirun the error is re-raised after its line, so that
Hydra records the member as failed and the sweep goes on with the others."""

import logging
import os
import signal
import sys
from collections.abc import Callable

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig
from pytorch_lightning.utilities.exceptions import SIGTERMException

from cvae.checks import check_config
from cvae.errors import UsageError

log = logging.getLogger(__name__)


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
        check_config(cfg, rules)
        return task(cfg)
    except SIGTERMException:  # CheckpointOnInterrupt has saved the run and said how to resume it
        print("error: stopped by SIGTERM", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except Exception as error:
        cause = usage_error(error)
        if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if in_multirun():
            log.error(str(cause))  # into the member's log; Hydra marks it failed and runs the others
            raise cause from None
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(1)
