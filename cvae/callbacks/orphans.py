"""A sweep member in a worker process of its launcher (hydra/launcher=joblib: loky's or multiprocessing's workers)
ends when the launcher dies, however it died (SIGKILL, the OOM killer): neither pool notices a dead parent, so the
worker would train on, write into a sweep no launcher summarises, and hold its member's .lock against the launch
that finishes the sweep (resume.auto=true). Torch-free: RunDirCheck starts the watch as each member starts."""

import functools
import multiprocessing
import os
import signal
import sys
import threading
import time
from contextlib import suppress

WATCH_PERIOD = 0.5  # seconds between looks at the launcher
GRACE_PERIOD = 10.0  # seconds a member gets to stop as SIGTERM stops it, before its worker is killed


def end_with_launcher() -> None:
    """Watch the launcher from here on, where this process is its worker; none where the members run in the
    launcher itself (the basic launcher, joblib with n_jobs=1) or in SLURM jobs (SLURM runs them, launcher or not)."""
    launcher = multiprocessing.parent_process()
    if launcher is not None:
        watch(launcher.pid)


@functools.cache  # one watch per worker, for its whole life: a worker waits idle between members
def watch(launcher: int) -> threading.Thread:
    thread = threading.Thread(target=end_when_gone, args=(launcher,), daemon=True, name="cvae-launcher-watch")
    thread.start()
    return thread


def end_when_gone(launcher: int) -> None:
    """Once the launcher is gone (this process was given another parent), the member stops as SIGTERM stops a run:
    at the end of its step, saving checkpoints/last.ckpt for the sweep run again to resume from (outside training,
    and in an idle worker, SIGTERM ends the process at once). The worker would then wait forever for its next
    member, so it is killed GRACE_PERIOD later, wherever it is: every result a run writes is written whole or not
    at all under its name (cvae/files.py), so a member cut short anywhere leaves its last whole checkpoint, never a
    half-written file that looks complete."""
    while os.getppid() == launcher:
        time.sleep(WATCH_PERIOD)
    with suppress(OSError, ValueError):  # the launcher's terminal may be gone with it
        print(
            f"error: the sweep's launcher (pid {launcher}) is gone: its worker {os.getpid()} stops as SIGTERM stops "
            f"a run; run the sweep again with resume.auto=true to finish it",
            file=sys.stderr,
            flush=True,
        )
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_PERIOD)
    os.kill(os.getpid(), signal.SIGKILL)
