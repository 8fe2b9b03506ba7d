"""Local DDP ranks: the devices a job takes, the launcher that starts this machine's other ranks, the watchdog that
ends the job when one of them dies, and how a job every rank stopped for a signal ends."""

import _thread
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from datetime import timedelta
from unittest.mock import patch

import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

# Private reads (tests/test_private_state.py lists every one): Lightning exports no public name for the launcher
# that re-runs the script per rank, the only one launch_local_ranks replaces
from pytorch_lightning.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from pytorch_lightning.utilities.exceptions import SIGTERMException

from cvae.callbacks.signals import StopTogether
from cvae.errors import RankError
from cvae.run.resolvers import python_path

# A DDP rank started by launch_local_ranks finds its job's config, resolved, in this environment variable.
JOB_CONFIG_VARIABLE = "CVAE_JOB_CONFIG"
WATCH_PERIOD = 0.5  # seconds between looks at the children
GRACE_PERIOD = 10.0  # seconds this rank gets to stop by itself once a child died, before it is ended
# Exit codes of a rank stopped by Ctrl-C or SIGTERM, as every rank is (StopTogether): no failure to act on
STOPPED = {128 + signal.SIGINT, 128 + signal.SIGTERM, -signal.SIGINT, -signal.SIGTERM}


@contextmanager
def exit_as_signalled(trainer: pl.Trainer):
    """A run every rank stopped for a signal ends as that signal asks (130 for SIGINT, 143 for SIGTERM); a rank
    started by launch_local_ranks exits with that code and no line of its own: rank 0 says it."""
    try:
        yield
    except SIGTERMException:
        stop = next((callback for callback in trainer.callbacks if isinstance(callback, StopTogether)), None)
        signum = stop.stopped_by if stop and stop.stopped_by else signal.SIGTERM
        if JOB_CONFIG_VARIABLE in os.environ:
            raise SystemExit(128 + signum) from None
        if signum == signal.SIGINT:
            raise KeyboardInterrupt from None
        raise


@contextmanager
def launch_local_ranks(trainer: pl.Trainer, cfg: DictConfig):
    """Start this machine's other DDP ranks, each running exactly this job (`python -m cvae.run.train`, its config
    in JOB_CONFIG_VARIABLE), watched by a RankWatchdog (Lightning would re-run the command line: in a multirun, the
    whole sweep). Afterwards this process is as it was, so that the next member of a multirun starts clean."""
    strategy = trainer.strategy
    # none where Lightning would start none: one device, another strategy, ranks started by torchrun or SLURM
    script = isinstance(strategy.launcher, _SubprocessScriptLauncher) and strategy.num_processes > 1
    if not script or strategy.cluster_environment.creates_processes_externally:
        with exit_as_signalled(trainer):
            yield
        end_process_group()
        return
    cluster = strategy.cluster_environment
    environment = patch.dict(os.environ)  # the rank variables set here and Lightning's, put back afterwards
    environment.start()
    saved_threads = torch.get_num_threads()
    os.environ.update(MASTER_ADDR=cluster.main_address, MASTER_PORT=str(cluster.main_port), LOCAL_RANK="0")
    os.environ.update(NODE_RANK=str(cluster.node_rank()), WORLD_SIZE=str(strategy.num_processes * strategy.num_nodes))
    first_rank = cluster.node_rank() * strategy.num_processes
    children = {first_rank + local: start_rank(local, cfg) for local in range(1, strategy.num_processes)}
    watchdog = RankWatchdog(children)
    ignored_interrupts = interruptible_by(watchdog)
    watchdog.start()
    try:
        with exit_as_signalled(trainer):
            yield
        for child in children.values():
            child.wait()
        watchdog.check()
    except (KeyboardInterrupt, SystemExit, SIGTERMException):
        # stopped: by the watchdog (which interrupts this thread) or by a signal, as every rank was
        if watchdog.failure is not None:
            raise watchdog.failure from None
        deadline = time.monotonic() + GRACE_PERIOD  # they saved their part too and are ending
        for child in children.values():
            with suppress(subprocess.TimeoutExpired):
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
        raise
    except BaseException:
        watchdog.check(wait=2 * WATCH_PERIOD)  # a rank that died is the cause: say so, not what it did here
        raise
    finally:
        watchdog.stop()
        if ignored_interrupts:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        for child in children.values():
            child.kill()  # a no-op for those that exited; the others would wait forever for this rank
            child.wait()
        end_process_group()
        environment.stop()
        torch.set_num_threads(saved_threads)


def interruptible_by(watchdog: "RankWatchdog") -> bool:
    """A job started in the background (`nohup`, `&` in a script) has SIGINT ignored, and `interrupt_main` then does
    nothing. There SIGINT gets a handler that raises for the watchdog's interrupt alone (a Ctrl-C stays ignored); True
    when it did, so that the caller puts SIG_IGN back."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN or threading.current_thread() is not threading.main_thread():
        return False

    def interrupt_for_a_dead_rank(signum: int, frame) -> None:
        if watchdog.failure is not None:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, interrupt_for_a_dead_rank)
    return True


class RankWatchdog(threading.Thread):
    """Ends the job within seconds when a rank this process started dies: kills the other ranks and interrupts the
    main thread. (Lightning's observer SIGKILLs the main process, a whole multirun with it, and names no rank.)"""

    def __init__(self, children: dict[int, subprocess.Popen]):
        super().__init__(daemon=True, name="cvae-rank-watchdog")
        self.children, self.failure = children, None
        self.stopped = threading.Event()
        self.lock = threading.Lock()  # no interrupt of the main thread once it called stop()

    def run(self) -> None:
        while not self.stopped.wait(WATCH_PERIOD):
            with self.lock:
                dead = not self.stopped.is_set() and self.rank_failure()
                if dead:
                    self.failure = dead
                    for child in self.children.values():
                        child.kill()
                    _thread.interrupt_main()
            if dead:
                self.reach_main_thread()
                return

    def reach_main_thread(self) -> None:
        """The interrupt lands at the main thread's next bytecode. One still in C++ after GRACE_PERIOD waits for the
        dead rank: in a collective (aborting the process group ends it with an error) or in the rendezvous, which no
        interrupt or abort reaches for the store's timeout (minutes): stand-ins join for the dead ranks there."""
        if self.stopped.wait(GRACE_PERIOD):
            return
        if torch.distributed.is_initialized():
            print(f"error: {self.failure}; aborting the process group", file=sys.stderr, flush=True)
            torch.distributed.distributed_c10d._abort_process_group()
        else:
            # held until the process ends; joins counted past the world size do no harm
            self.stand_ins = join_for_dead_ranks(len(self.children))
        if self.stopped.wait(GRACE_PERIOD):
            return
        # nothing reached it: rather than a job that hangs, this process ends, the line said (a multirun with it;
        # never before: the rest of a multirun and its summary come after this member)
        print(f"error: {self.failure}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def check(self, wait: float = 0.0) -> None:
        """Raise the failure seen, or that of a rank that ended in error (waiting up to `wait` s for one)."""
        deadline = time.monotonic() + wait
        while self.failure is None and not self.rank_failure() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.failure = self.failure or self.rank_failure()
        if self.failure is not None:
            raise self.failure from None

    def rank_failure(self) -> RankError | None:
        """The error naming the lowest rank that ended in error, its pid and exit code; None while none did."""
        failed = {rank: code for rank, child in self.children.items() if (code := child.poll()) and code not in STOPPED}
        if not failed:
            return None
        rank, code = min(failed.items())
        return RankError(
            f"DDP rank {rank} (pid {self.children[rank].pid}) exited with code {code}; the job was stopped. "
            f"Its output above says why"
        )

    def stop(self) -> None:
        """After this returns the watchdog interrupts nothing; an interrupt it sent just before lands here."""
        try:
            with self.lock:
                self.stopped.set()
            if self.failure is not None:
                time.sleep(2 * WATCH_PERIOD)  # Python delivers a pending interrupt_main at the next bytecode
        except KeyboardInterrupt:
            self.stopped.set()


def join_for_dead_ranks(count: int) -> list:
    """Clients of this job's rendezvous store, one per rank that will not join: each counts as a joined rank, so
    rank 0's wait returns. None where no store listens: a client would retry for seconds and log tracebacks."""
    address, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    world_size, timeout = int(os.environ["WORLD_SIZE"]), timedelta(seconds=5)
    try:
        socket.create_connection((address, port), timeout=1).close()
        return [torch.distributed.TCPStore(address, port, world_size, timeout=timeout) for _ in range(count)]
    except (OSError, RuntimeError):  # no store listens, or it closed meanwhile: the main thread left the rendezvous
        return []


def end_process_group() -> None:
    """Destroy the process group Lightning made (it leaves it to the script). A rank that exits holding one can
    be killed by SIGABRT in the interpreter's shutdown while gloo's threads still hold tensors (pytorch#190489):
    under torchrun its node's agent then fails, and the other node's agent waits out its exit barrier (300 s)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def start_rank(local_rank: int, cfg: DictConfig) -> subprocess.Popen:
    config = OmegaConf.to_yaml(cfg, resolve=True)
    env = {**os.environ, "LOCAL_RANK": str(local_rank), "PYTHONPATH": python_path(), JOB_CONFIG_VARIABLE: config}
    return subprocess.Popen(module_command("cvae.run.train"), env=env)


def module_command(module: str, safe_path: bool = sys.version_info >= (3, 11)) -> list[str]:
    """`python -m module`, never importing from the folder it starts in (`-m` puts it first on sys.path). Python 3.10
    has no -P, and -I would drop PYTHONPATH (the user's trusted classes with it): there the process removes it."""
    run = f"import runpy, sys; del sys.path[0]; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    return [sys.executable, "-P", "-m", module] if safe_path else [sys.executable, "-c", run]


def member_devices(trainer_cfg: DictConfig):
    """`trainer.devices` for this job: under hydra/launcher=joblib, whose members train side by side, member k takes
    GPUs k*n, k*n+1, ... (mod the GPUs there are) for a count of n, instead of all sharing cuda:0."""
    devices = trainer_cfg.devices
    joblib = HydraConfig.initialized() and "JoblibLauncher" in str(HydraConfig.get().launcher.get("_target_"))
    on_gpus = isinstance(devices, int) and devices > 0 and trainer_cfg.accelerator in ("auto", "gpu", "cuda")
    if not (joblib and on_gpus and (gpus := torch.cuda.device_count())):  # none here: as configured
        return devices
    first = HydraConfig.get().job.num * devices
    return [(first + offset) % gpus for offset in range(devices)]
