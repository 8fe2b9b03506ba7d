"""What train.py and evaluate.py share around their work: the launch's checks before Hydra writes anything
(RunDirCheck: the trust boundary's and the run-dir boundary's checks, the schema), the run dir claimed for this
run alone, and bad input reported as one line ("error: <what was wrong and how to fix it>") with
exit status 1, not a traceback; Ctrl-C and SIGTERM end with 130 and 143.

No torch or Lightning at module level: Hydra's RunDirCheck runs check_launch when the launch starts, before the
entry point imports its task (torch, Lightning: seconds), so that a rejected value costs about a second.

HYDRA_FULL_ERROR=1 shows the traceback instead. In a multirun the error is re-raised after its line, so that
Hydra records the member as failed and the sweep goes on with the others."""

import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

from cvae.errors import ConfigError, RunDirError, UsageError
from cvae.run.resolvers import launched_rank
from cvae.run.rundir import check_hydra_writes, check_output_dir, check_subdir, claim, may_sweep, may_write
from cvae.run.schema import check_added_keys, check_typed_digits, check_values
from cvae.trust import check_config_file, first_line

log = logging.getLogger(__name__)
STOPPING_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def check_launch(config: DictConfig, single_run: bool) -> None:
    """What Hydra composed, checked before Hydra writes anything or imports the task: what the config file asks
    beyond values (cvae.trust.check_config_file), keys a `+` added that nothing reads; then, for a single run (a
    sweep's members are checked as each starts), every value by the entry point's schema and digit strings as
    they were typed."""
    check_config_file(config)
    check_added_keys(config)
    if single_run:
        check_values(OmegaConf.masked_copy(config, [key for key in config if key != "hydra"]))
        check_typed_digits(config)


# paths a user types, relative to where they typed the command (not to the run dir Hydra may change into)
TYPED_PATH_VARIABLES = ("CVAE_DATA_DIR", "PROJECT_ROOT")
TYPED_PATH_KEYS = ("ckpt_path", "data.data_dir")


def environment_from_where_typed() -> None:
    """Make the path variables and PYTHONPATH absolute, once, at launch: DDP ranks and launched jobs inherit them
    and read the same files. (An empty PYTHONPATH entry means the current folder, as Python reads it.)"""
    for variable in TYPED_PATH_VARIABLES:
        if os.environ.get(variable):
            os.environ[variable] = os.path.abspath(os.environ[variable])
    if os.environ.get("PYTHONPATH"):
        os.environ["PYTHONPATH"] = os.pathsep.join(map(os.path.abspath, os.environ["PYTHONPATH"].split(os.pathsep)))


def config_from_where_typed(cfg: DictConfig) -> None:
    """The typed path keys made absolute from Hydra's launch folder once the job runs elsewhere (hydra.job.chdir=true
    changes into the run dir); interpolations and missing values are left to the checks."""
    if not HydraConfig.initialized() or os.getcwd() == HydraConfig.get().runtime.cwd:
        return
    for key in TYPED_PATH_KEYS:
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or leaf not in parent or OmegaConf.is_missing(parent, leaf):
            continue
        if not OmegaConf.is_interpolation(parent, leaf) and isinstance(parent[leaf], str) and parent[leaf]:
            parent[leaf] = to_absolute_path(parent[leaf])


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


def usage_error(error: BaseException) -> UsageError | None:
    """The UsageError behind an exception: itself, or what Hydra's instantiate or Lightning wrapped."""
    while error is not None:
        if isinstance(error, UsageError):
            return error
        error = error.__cause__ or error.__context__
    return None


def run_task(task: Callable[[DictConfig], object], cfg: DictConfig):
    """Check the config's values (again for a launch, first for a DDP rank or a caller in Python), then run the
    task. A sweep member refused in one line returns no metrics ({}): Hydra would print a traceback of a raised
    error, and the sweep's summary ends the sweep with its line (SweepSummary). The signal handlers are put back
    afterwards (Lightning leaves SIGINT ignored after a Ctrl-C)."""
    handlers = {signum: signal.getsignal(signum) for signum in STOPPING_SIGNALS}
    try:
        config_from_where_typed(cfg)
        check_values(cfg)
        check_hardware(cfg)
        return task(cfg)
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
        if in_multirun():  # the sweep goes on: the member ends failed (no metrics), its line said; the sweep says it
            log.error(str(cause))  # into the member's log
            print(f"error: member {HydraConfig.get().job.num}: {cause}", file=sys.stderr, flush=True)
            return {}
        print(f"error: {cause}", file=sys.stderr)
        sys.exit(1)
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)


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


class RunDirCheck(Callback):
    """Hydra callback, before Hydra writes anything: the launch's config is checked (a refused launch leaves
    nothing behind), then the dir is created (or said in one line why not), claimed by a lock for this process
    alone, and written only as `may_write` allows. A later launch keeps the first launch's .hydra/ and puts its
    own config and overrides in .hydra/launch<n>/, so the run dir keeps every launch's overrides."""

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        directory = Path(config.hydra.run.dir)
        try:
            check_launch(config, single_run=True)
            check_output_dir(config)
            check_hydra_writes(config, directory)
            if launched_rank() != 0:  # torchrun's or srun's other ranks of rank 0's run: they write nothing here
                self.create(directory, "hydra.run.dir")
                return
            may_write(config, directory)  # a refusal writes nothing, not even the lock
            self.create(directory, "hydra.run.dir")
            self.lock = claim(directory)
            may_write(config, directory)  # again, now that no other launch can change the dir
            keep_history(config, directory)
        except (UsageError, OmegaConfBaseException) as error:  # Hydra would only warn of an exception here
            refuse(error)

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        """Before the sweeper writes multirun.yaml (and SweepSummary, listed after this, its table): the sweep dir
        is claimed, new, and its members' dirs inside it. (Each member's values are checked as it starts.)"""
        directory = Path(config.hydra.sweep.dir)
        try:
            check_launch(config, single_run=False)
            check_output_dir(config)
            check_subdir(config)
            check_hydra_writes(config, directory / "member")  # each member's dir lies in the sweep dir
            may_sweep(config, directory)
            self.create(directory, "hydra.sweep.dir")
            self.lock = claim(directory, "hydra.sweep.dir")
            may_sweep(config, directory)
        except (UsageError, OmegaConfBaseException) as error:
            refuse(error)

    def on_job_start(self, config: DictConfig, **kwargs) -> None:
        """A sweep member's dir, as a single run's: locked for this member alone and written only as `may_write`
        allows (in a new sweep dir that is "new"; the lock keeps a second launcher off it)."""
        if not in_multirun() or launched_rank() != 0:
            return
        directory = Path(config.hydra.runtime.output_dir)
        try:
            self.member_lock = claim(directory)
            may_write(config, directory)
        except UsageError as error:
            log.error(str(error))
            raise

    def on_job_end(self, config: DictConfig, **kwargs) -> None:
        member_lock = getattr(self, "member_lock", None)
        if member_lock is not None:
            os.close(member_lock)  # the next member of this process takes its own
            self.member_lock = None

    @staticmethod
    def create(directory: Path, key: str) -> None:
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise RunDirError(
                f"{key}={directory} cannot be created ({error.strerror}); choose a writable folder"
            ) from None


def refuse(error: Exception) -> None:
    """One line and exit 1, from a Hydra callback (SystemExit: Hydra turns an exception there into a warning)."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        traceback.print_exception(error)
    if isinstance(error, OmegaConfBaseException):
        error = ConfigError(f"the config cannot be resolved ({first_line(error)}); fix or remove that value")
    print(f"error: {error}", file=sys.stderr)
    sys.exit(1)


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
