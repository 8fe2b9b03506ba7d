"""Other processes are not the config's to choose (issue 33, item 3): git runs only on the project's own checkout
with no hook or monitor, DDP ranks import only from the installed package or the checkout, and a rank that dies at
start ends the job within 30 s with one line. A relative path means relative to where the command was typed
(item 7), for every rank, whatever folder Hydra changes into."""

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl

from cvae.run.launch import module_command
from cvae.run.resolvers import python_path
from tests.conftest import QUICK_EVALUATION, ROOT
from tests.test_sweeps import TINY_RUN
from tests.test_train import run_script


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def monitored_repo(tmp_path) -> tuple[Path, Path]:
    """A git repo whose core.fsmonitor is a script that leaves a marker: what `git status` there would run."""
    repo, marker = tmp_path / "repo", tmp_path / "fsmonitor-ran"
    repo.mkdir()
    hook = repo / "monitor.sh"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    git("init", "-q", cwd=repo)
    git("add", "monitor.sh", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "x", cwd=repo)
    git("config", "core.fsmonitor", str(hook), cwd=repo)
    git("status", "--porcelain", cwd=repo)  # the hook does run where git is asked there
    assert marker.exists()
    marker.unlink()
    return repo, marker


def test_git_runs_only_on_the_projects_checkout_with_no_monitor(monitored_repo, tmp_path, data_dir):
    """paths.root_dir, the working directory and GIT_DIR all name the other repo: environment.json still records
    the project's commit, and that repo's fsmonitor never ran."""
    repo, marker = monitored_repo
    run_dir = tmp_path / "run"
    result = run_script(
        str(ROOT / "train.py"),
        *TINY_RUN,
        f"data.data_dir={data_dir}",
        f"paths.root_dir={repo}",
        f"hydra.run.dir={run_dir}",
        cwd=repo,
        env_extra={"GIT_DIR": str(repo / ".git"), "GIT_WORK_TREE": str(repo)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert not marker.exists(), "the other repo's core.fsmonitor ran"
    recorded = json.loads((run_dir / "environment.json").read_text())["git"]
    assert recorded["commit"] == git("rev-parse", "HEAD", cwd=ROOT)


PLANTED = """import pathlib
pathlib.Path({marker!r}).touch()
"""


@pytest.mark.parametrize("safe_path", [True, False], ids=["-P", "python3.10"])
def test_a_module_command_never_imports_from_the_folder_it_starts_in(tmp_path, safe_path):
    """The command a rank is started with, as on Python 3.11+ and as on 3.10: a module planted in its working
    directory is not found, let alone run."""
    marker = tmp_path / "imported"
    (tmp_path / "planted_probe.py").write_text(PLANTED.format(marker=str(marker)))
    result = subprocess.run(module_command("planted_probe", safe_path), cwd=tmp_path, capture_output=True, text=True)
    assert "No module named planted_probe" in result.stderr, result.stderr
    assert not marker.exists()


def test_a_started_process_imports_from_the_checkout_then_the_absolute_python_path_entries(monkeypatch):
    """An empty or relative PYTHONPATH entry would be the rank's working directory (its run dir)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(["", "relative", "/opt/mine", ""]))
    assert python_path() == os.pathsep.join([str(ROOT), "/opt/mine"])


@pytest.mark.parametrize("chdir", [True, False])
def test_ddp_ranks_never_import_from_the_run_dir_or_the_cwd(tmp_path, data_dir, chdir):
    """A `cvae` package planted in the run dir and in the folder the command is typed in (it records its import,
    then hands over to the real package, so that the run goes on) is imported by no rank. (The run dir is one an
    earlier launch of ours left, .hydra/ and no results: a run may use it; a dir holding only the planted package is
    refused outright, tests/test_rundir.py.)"""
    cwd, run_dir, marker = tmp_path / "cwd", tmp_path / "run", tmp_path / "planted-cvae-imported"
    real = str(ROOT / "cvae")
    hand_over = f"__path__[:] = [{real!r}]\nexec((pathlib.Path({real!r}) / '__init__.py').read_text())\n"
    planted = PLANTED + hand_over
    (run_dir / ".hydra").mkdir(parents=True)
    for folder in (cwd, run_dir):
        (folder / "cvae").mkdir(parents=True)
        (folder / "cvae" / "__init__.py").write_text(planted.format(marker=str(marker)))
    result = run_script(
        str(ROOT / "train.py"),
        *TINY_RUN,
        "trainer=ddp_cpu",
        f"data.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        f"hydra.job.chdir={str(chdir).lower()}",
        cwd=cwd,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "metrics.json").is_file()
    assert not marker.exists(), "a rank imported the planted cvae package"


class ExitAtStart(pl.Callback):
    """Stands in for a rank that dies at start (a bad import, out of memory while building): built by `rank` only,
    it waits until rank 0 listens for the rendezvous, so that rank 0 waits there for it, and exits with `code`,
    writing the time it died to `died`."""

    def __init__(self, rank: int, code: int, died: str):
        if os.environ.get("LOCAL_RANK") != str(rank):
            return
        address = (os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                socket.create_connection(address, timeout=1).close()
                break
            except OSError:
                time.sleep(0.2)
        time.sleep(1)
        Path(died).write_text(str(time.time()))
        os._exit(code)


@pytest.mark.parametrize("sigint", [signal.SIG_DFL, signal.SIG_IGN], ids=["interactive", "background"])
def test_a_rank_that_dies_at_start_ends_the_job_within_30_s_with_one_line(tmp_path, data_dir, sigint):
    """Rank 0 waits in the process group's rendezvous for rank 1, which never joins: no interrupt reaches a thread
    in that wait, which otherwise lasts minutes. Started in the background (`nohup`, `&` in a script) the job has
    SIGINT ignored, which a Python interrupt of the main thread obeys too: both dispositions are set here."""
    died = tmp_path / "died"
    result = run_script(
        str(ROOT / "train.py"),
        *TINY_RUN,
        "trainer=ddp_cpu",
        f"data.data_dir={data_dir}",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"+callbacks.exit._target_={__name__}.ExitAtStart",
        "+callbacks.exit.rank=1",
        "+callbacks.exit.code=3",
        f"+callbacks.exit.died={died}",
        preexec_fn=lambda: signal.signal(signal.SIGINT, sigint),
    )
    ended = time.time()
    assert died.exists(), result.stderr[-3000:]
    assert ended - float(died.read_text()) < 30, f"{ended - float(died.read_text()):.0f} s after rank 1 died"
    assert result.returncode == 1, result.stderr[-3000:]  # RankError, said by the main thread: no kill
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: DDP rank 1") and "exited with code 3" in lines[-1], result.stderr[-3000:]
    assert sum(line.startswith("error: ") for line in lines) == 1, result.stderr[-3000:]


def test_a_relative_data_dir_means_relative_to_where_the_command_was_typed(tmp_path, data_dir):
    """README's `export CVAE_DATA_DIR=../shared/data`, then a run that changes into its run dir (as Hydra does with
    hydra.job.chdir=true) and starts a DDP rank: every rank reads the MNIST the path named where it was typed."""
    typed_here, run_dir = tmp_path, tmp_path / "deeper" / "than" / "the" / "cwd"  # `..` past / would stay at /
    result = run_script(
        str(ROOT / "train.py"),
        *TINY_RUN,
        "trainer=ddp_cpu",
        f"hydra.run.dir={run_dir}",
        "hydra.job.chdir=true",
        cwd=typed_here,
        env_extra={"CVAE_DATA_DIR": os.path.relpath(data_dir, typed_here)},
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_a_relative_ckpt_path_means_relative_to_where_the_command_was_typed(tmp_path, trained_run, data_dir):
    """`python evaluate.py ckpt_path=<relative> hydra.job.chdir=true`: the checkpoint named from where the command
    was typed is evaluated, not one looked for in the run dir."""
    output_dir, _ = trained_run
    run_dir = tmp_path / "deeper" / "than" / "the" / "cwd"
    result = run_script(
        str(ROOT / "evaluate.py"),
        f"ckpt_path={os.path.relpath(output_dir / 'checkpoints' / 'best.ckpt', tmp_path)}",
        *QUICK_EVALUATION,
        f"data.data_dir={os.path.relpath(data_dir, tmp_path)}",
        f"hydra.run.dir={run_dir}",
        "hydra.job.chdir=true",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (run_dir / "samples.png").is_file()
