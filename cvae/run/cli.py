"""What train.py and evaluate.py share: the launch's checks before Hydra writes anything (RunDirCheck), and bad input
said in one line ("error: ...", exit 1). No torch at module level: a value refused at launch costs about a second."""

import itertools
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from cvae.callbacks.orphans import end_with_launcher
from cvae.errors import ConfigError, RunDirError, UsageError
from cvae.files import TYPED_PATH_KEYS
from cvae.run.resolvers import launched_rank
from cvae.run.rundir import check_hydra_writes, claim, may_sweep, may_write, remove_refused_launch
from cvae.run.schema import check_added_keys, check_typed_digits, check_values
from cvae.trust import check_config_file, first_line

log = logging.getLogger(__name__)
NEW_RUN_DIR: dict = {}  # directory and whether it existed, of a single run that found it empty: a refusal removes it
REFUSED_MEMBER: list = []  # why RunDirCheck refused the sweep member about to run in this process (its dir held)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_launch(config: DictConfig, single_run: bool) -> None:
    """What Hydra composed, before it writes anything (a sweep's members' values are checked as each starts)."""
    check_config_file(config)
    check_added_keys(config)
    if single_run:
        check_values(OmegaConf.masked_copy(config, [key for key in config if key != "hydra"]))
        check_typed_digits(config)


# paths a user types, relative to where they typed the command (not to the run dir Hydra may change into)
TYPED_PATH_VARIABLES = ("CVAE_DATA_DIR", "PROJECT_ROOT")


def environment_from_where_typed() -> None:
    """The path variables and PYTHONPATH made absolute at launch: DDP ranks and launched jobs inherit them."""
    for variable in TYPED_PATH_VARIABLES:
        if os.environ.get(variable):
            os.environ[variable] = os.path.abspath(os.environ[variable])
    if os.environ.get("PYTHONPATH"):
        os.environ["PYTHONPATH"] = os.pathsep.join(map(os.path.abspath, os.environ["PYTHONPATH"].split(os.pathsep)))


def config_from_where_typed(cfg: DictConfig) -> None:
    """The typed path keys made absolute from Hydra's launch folder once the job runs elsewhere (hydra.job.chdir)."""
    if not HydraConfig.initialized() or os.getcwd() == HydraConfig.get().runtime.cwd:
        return
    for key in TYPED_PATH_KEYS:  # a value that does not resolve is left to the checks
        value = OmegaConf.select(cfg, key, throw_on_resolution_failure=False)
        if isinstance(value, str) and value:
            OmegaConf.update(cfg, key, to_absolute_path(value))


def check_hardware(cfg: DictConfig) -> None:
    """A GPU asked for where torch sees none (imports torch: run after the value checks)."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator={accelerator} but torch sees no CUDA GPU here; use trainer.accelerator=cpu "
                f"(or auto), or run on a machine with a GPU"
            )


def run_task(task: Callable[[DictConfig], object], cfg: DictConfig):
    """Check the config's values (again for a launch), then run the task. A refused sweep member (a value, its dir)
    returns no metrics ({}). The signal handlers are put back afterwards (Lightning leaves SIGINT ignored after a
    Ctrl-C)."""
    handlers = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        if REFUSED_MEMBER:
            raise REFUSED_MEMBER.pop()
        config_from_where_typed(cfg)
        check_values(cfg)
        check_hardware(cfg)
        return task(cfg)
    except KeyboardInterrupt as interrupt:
        stop(signal.SIGINT, interrupt)
    except SystemExit as exit_:
        if type(exit_).__name__ == "SIGTERMException":  # Lightning's; by name: importing Lightning costs seconds
            stop(signal.SIGTERM, exit_)
        if not isinstance(exit_.__context__, KeyboardInterrupt):  # else Lightning's sys.exit(1) handling a Ctrl-C
            raise
        stop(signal.SIGINT, exit_.__context__)
    except Exception as error:
        cause = error  # the UsageError behind it: itself, or what Hydra's instantiate or Lightning wrapped
        while cause is not None and not isinstance(cause, UsageError):
            cause = cause.__cause__ or cause.__context__
        if cause is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        if in_multirun():  # the sweep goes on: the member ends failed (no metrics), its line said; the sweep says it
            log.error(str(cause))  # into the member's log
            print(f"error: member {HydraConfig.get().job.num}: {cause}", file=sys.stderr, flush=True)
            return {}
        print(f"error: {cause}", file=sys.stderr)
        if NEW_RUN_DIR:
            remove_refused_launch(**NEW_RUN_DIR)
        sys.exit(1)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


def stop(signum: int, cause: BaseException) -> NoReturn:
    """One line and 128 + the signal's number, as a shell reports a process the signal ended."""
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"
    notes = getattr(cause, "__notes__", None) or getattr(cause.__context__, "__notes__", None) or []
    saved = f"; {notes[-1]}" if notes else ""  # CheckpointOnInterrupt notes where it saved the run
    print(f"error: stopped by {name}{saved}", file=sys.stderr, flush=True)
    sys.exit(128 + signum)


class RunDirCheck(Callback):
    """Before Hydra writes anything: the config checked, then the run dir made, locked, written as may_write allows."""

    member_lock: int | None = None

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        directory = Path(config.hydra.run.dir)
        NEW_RUN_DIR.clear()  # this launch's alone: never an earlier run of this process (a script calling main twice)
        try:
            check_launch(config, single_run=True)
            check_hydra_writes(config, directory)
            if launched_rank() != 0:  # torchrun's or srun's other ranks of rank 0's run: they write nothing here
                create_dir(directory, "hydra.run.dir")
                return
            if may_write(config, directory) == "new" and not (directory / ".hydra").exists():  # empty or absent
                NEW_RUN_DIR.update(directory=directory, existed=directory.exists())
            create_dir(directory, "hydra.run.dir")  # a refusal before this wrote nothing, not even the lock
            self.lock = claim(directory)
            may_write(config, directory)  # again, now that no other launch can change the dir
            # a later launch into the dir keeps its config and overrides in .hydra/launch<n>/ (n = 2, 3, ...)
            subdir = config.hydra.output_subdir
            if subdir is not None and (directory / subdir).exists():
                launch = next(n for n in itertools.count(2) if not (directory / subdir / f"launch{n}").exists())
                with read_write(config.hydra), open_dict(config.hydra):
                    config.hydra.output_subdir = f"{subdir}/launch{launch}"
        except (UsageError, OmegaConfBaseException) as error:  # Hydra would only warn of an exception here
            refuse(error)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Before the sweeper writes multirun.yaml: the sweep dir claimed, new, its members' dirs inside it."""
        directory = Path(config.hydra.sweep.dir)
        try:
            check_launch(config, single_run=False)
            check_hydra_writes(config, directory / "member", sweep=True)  # each member's dir lies in the sweep dir
            may_sweep(config, directory)
            create_dir(directory, "hydra.sweep.dir")
            self.lock = claim(directory, "hydra.sweep.dir")
            may_sweep(config, directory)
        except (UsageError, OmegaConfBaseException) as error:
            refuse(error)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        """A sweep member's dir, as a single run's: locked for this member and written only as `may_write` allows."""
        if not in_multirun() or launched_rank() != 0:
            return
        end_with_launcher()  # a member in a worker of its launcher (joblib) ends when the launcher dies
        try:
            self.member_lock = claim(directory := Path(config.hydra.runtime.output_dir))
            may_write(config, directory)
        except UsageError as error:  # Hydra would only warn and run the member all the same: run_task refuses it
            REFUSED_MEMBER.append(error)

    def on_job_end(self, config: DictConfig, **kwargs) -> None:
        if self.member_lock is not None:
            os.close(self.member_lock)  # the next member of this process takes its own
            self.member_lock = None


def create_dir(directory: Path, key: str) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunDirError(f"{key}={directory} cannot be created ({error.strerror}); choose a writable folder") from None


def refuse(error: Exception) -> None:
    """One line and exit 1, from a Hydra callback (SystemExit: Hydra turns an exception there into a warning)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(error)
    if isinstance(error, OmegaConfBaseException):
        error = ConfigError(f"the config cannot be resolved ({first_line(error)}); fix or remove that value")
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)
