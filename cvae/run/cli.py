"""What train.py and evaluate.py share around their work: config checks before anything starts, the run dir
claimed for this run alone, and bad input reported as one line ("error: <what was wrong and how to fix it>") with
exit status 1, not a traceback; Ctrl-C and SIGTERM end with 130 and 143.

No torch or Lightning at module level: the entry points import this, run the checks, and only then import the
task ("cvae.run.train:train"), so that a rejected value costs about a second, not the 15 s of those imports.

HYDRA_FULL_ERROR=1 shows the traceback instead. In a multirun the error is re-raised after its line, so that
Hydra records the member as failed and the sweep goes on with the others."""

import fcntl
import importlib
import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

from cvae.errors import ConfigError, RunDirError, UsageError
from cvae.run.checks import check_config, check_hardware
from cvae.run.resolvers import launched_rank

log = logging.getLogger(__name__)
# what to pass for a key the config leaves mandatory (???)
MANDATORY_EXAMPLES = {"ckpt_path": "outputs/<date>/<time>/checkpoints/best.ckpt"}
# What a run leaves in its dir: a dir holding any of these is an earlier run's, never written over. (.hydra/
# alone is a launch that left no results, refused or failed early: a new launch may use the dir, keeping it.)
RUN_RESULTS = ("metrics.json", "checkpoints")
LOCK_NAME = ".lock"  # held (flock) by the process writing the run dir; the OS releases it when that process ends
RESUMABLE_TASKS = ("train",)  # evaluate.py has no resume: its runs never share a dir
STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def usage_error(error: BaseException) -> UsageError | None:
    """The UsageError behind an exception: itself, or what Hydra's instantiate or Lightning wrapped."""
    while error is not None:
        if isinstance(error, UsageError):
            return error
        error = error.__cause__ or error.__context__
    return None


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


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


def check_mandatory(cfg: DictConfig) -> None:
    """Keys the config leaves for the command line (??? in the YAML) that it did not get."""
    missing = OmegaConf.missing_keys(cfg)
    if missing:
        key = sorted(missing)[0]
        raise ConfigError(f"{key} is required: pass {key}={MANDATORY_EXAMPLES.get(key, '<value>')}")


class RunDirCheck(Callback):
    """Hydra callback, before Hydra writes anything into the run dir: the dir is created (or said in one line why
    not), claimed by a lock for this process alone, and refused if it holds an earlier run's results, unless this
    launch resumes that very run (ckpt_path inside the dir). A later launch keeps the first launch's .hydra/ and
    puts its own config and overrides in .hydra/launch<n>/, so the run dir keeps every launch's overrides."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        directory = Path(config.hydra.run.dir)
        try:
            self.create(directory, "hydra.run.dir")
            if launched_rank() != 0:  # torchrun's or srun's other ranks of rank 0's run: they write nothing here
                return
            self.lock = claim(directory)
            if holds_results(directory) and not resumes(config, directory):
                raise RunDirError(
                    f"hydra.run.dir={directory} already holds a run ({', '.join(holds_results(directory))}); "
                    f"choose a new dir{resume_hint(config, directory)}"
                )
            keep_history(config, directory)
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        directory = Path(config.hydra.sweep.dir)
        try:
            self.create(directory, "hydra.sweep.dir")
            if (directory / "multirun.yaml").exists() and not resume_auto(config):  # auto: run it again to finish it
                raise RunDirError(f"hydra.sweep.dir={directory} already holds a sweep; choose a new dir")
        except UsageError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(1)

    @staticmethod
    def create(directory: Path, key: str) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(
                f"{key}={directory} cannot be created ({error.strerror}); choose a writable folder"
            ) from None


def claim(directory: Path) -> int:
    """A lock on the run dir held until this process ends: a second writer is refused, naming the first.
    (flock, not a lock file's existence: a run killed with SIGKILL leaves no stale lock behind.)"""
    lock = directory / LOCK_NAME
    try:
        descriptor = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise RunDirError(
            f"hydra.run.dir={directory} is not writable ({error.strerror}); choose a writable folder"
        ) from None
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(descriptor, 32).decode(errors="replace").strip() or "unknown"
        os.close(descriptor)
        raise RunDirError(
            f"hydra.run.dir={directory} is in use by another run (pid {holder}); wait for it to end or choose "
            f"another dir"
        ) from None
    os.ftruncate(descriptor, 0)
    os.write(descriptor, f"{os.getpid()}\n".encode())
    return descriptor


def holds_results(directory: Path) -> list[str]:
    """The results in the dir: metrics.json, a checkpoints folder with a file in it."""
    return [name for name in RUN_RESULTS if (directory / name).is_file() or any((directory / name).glob("*"))]


def resumes(config: DictConfig, directory: Path) -> bool:
    """Whether this launch resumes the run of `directory`: a training launch from a checkpoint inside it."""
    if config.get("task_name") not in RESUMABLE_TASKS or not (config.get("ckpt_path") or resume_auto(config)):
        return False
    from cvae.run.resume import REFUSE, launch_decision  # torch: only for a launch that asks to resume

    return launch_decision(directory, config).action != REFUSE


def resume_auto(config: DictConfig) -> bool:
    return bool(OmegaConf.select(config, "resume.auto", default=False))


def resume_hint(config: DictConfig, directory: Path) -> str:
    last = directory / "checkpoints" / "last.ckpt"
    if config.get("task_name") in RESUMABLE_TASKS and last.is_file():
        return f", or resume that run with ckpt_path={last}"
    return ""


def keep_history(config: DictConfig, directory: Path) -> None:
    """When the dir holds an earlier launch's .hydra/ (this launch resumes it, or it left no results), point
    Hydra's output_subdir at .hydra/launch<n>/ for this launch (n = 2, 3, ...): the first launch's config and
    overrides stay in .hydra/, each later one's beside them."""
    subdir = config.hydra.output_subdir
    if subdir is None or not (directory / subdir).exists():
        return
    launch = 2
    while (directory / subdir / f"launch{launch}").exists():
        launch += 1
    with read_write(config.hydra), open_dict(config.hydra):
        config.hydra.output_subdir = f"{subdir}/launch{launch}"
