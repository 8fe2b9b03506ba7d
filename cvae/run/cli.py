"""What train.py and evaluate.py share around their work: config checks before anything starts, the run dir
claimed for this run alone, and bad input reported as one line ("error: <what was wrong and how to fix it>") with
exit status 1, not a traceback; Ctrl-C and SIGTERM end with 130 and 143.

No torch or Lightning at module level: the entry points import this, run the checks, and only then import the
task ("cvae.run.train:train"), so that a rejected value costs about a second, not the 15 s of those imports.

HYDRA_FULL_ERROR=1 shows the traceback instead. In a multirun the error is re-raised after its line, so that
Hydra records the member as failed and the sweep goes on with the others."""

import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable

from omegaconf import DictConfig

from cvae.errors import UsageError
from cvae.run.checks import check_config, check_hardware, check_mandatory
from cvae.run.rundir import in_multirun

log = logging.getLogger(__name__)
STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def usage_error(error: BaseException) -> UsageError | None:
    """The UsageError behind an exception: itself, or what Hydra's instantiate or Lightning wrapped."""
    while error is not None:
        if isinstance(error, UsageError):
            return error
        error = error.__cause__ or error.__context__
    return None


def run_task(task: Callable[[DictConfig], object] | str, cfg: DictConfig, rules: dict):
    """Check the config, then run the task: a function, or "module:function", imported only once the checks
    passed. The signal handlers are put back afterwards (Lightning leaves SIGINT ignored after a Ctrl-C)."""
    handlers = {signum: signal.getsignal(signum) for signum in STOPPING_SIGNALS}
    try:
        check_mandatory(cfg)
        check_config(cfg, rules)
        check_hardware(cfg)
        return load_task(task)(cfg)
    except KeyboardInterrupt as interrupt:
        stop(signal.SIGINT, interrupt)
    except SystemExit as exit_:
        signum, cause = stopped_by(exit_)
        if signum is None:
            raise
        stop(signum, cause)
    except Exception as error:
        cause = usage_error(error)
        if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if in_multirun():
            log.error(str(cause))  # into the member's log; Hydra marks it failed and runs the others
            raise cause from None
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(1)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def load_task(task: Callable[[DictConfig], object] | str) -> Callable[[DictConfig], object]:
    if callable(task):
        return task
    module, _, function = task.partition(":")
    return getattr(importlib.import_module(module), function)


def stopped_by(exit_: SystemExit) -> tuple[int | None, BaseException]:
    """The signal behind an exit: Lightning's SIGTERMException, or its sys.exit(1) after a Ctrl-C (which it
    raises while handling the KeyboardInterrupt, so that is the exit's context)."""
    if type(exit_).__name__ == "SIGTERMException":  # by name: importing Lightning here would cost seconds
        return signal.SIGTERM, exit_
    if isinstance(exit_.__context__, KeyboardInterrupt):
        return signal.SIGINT, exit_.__context__
    return None, exit_


def stop(signum: int, cause: BaseException) -> None:
    """One line and 128 + the signal's number, as a shell reports a process the signal ended."""
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"
    notes = getattr(cause, "__notes__", None) or getattr(cause.__context__, "__notes__", None) or []
    saved = f"; {notes[-1]}" if notes else ""  # CheckpointOnInterrupt notes where it saved the run
    print(f"error: stopped by {name}{saved}", file=sys.stderr, flush=True)
    sys.exit(128 + signum)
