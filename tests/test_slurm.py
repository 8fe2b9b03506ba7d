"""Sweeps on a real SLURM cluster (hydra/launcher=slurm, submitit): the one-node cluster .ci/slurm-cluster.sh
brings up on localhost, with accounting, so that submitit sees a cancelled job. Skipped, saying why, where no
cluster answers `sinfo`."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest
import pytorch_lightning as pl

from tests.conftest import ROOT
from tests.test_resume_sweeps import assert_as_never_stopped, files_of, killed_and_run_again
from tests.test_sweeps import TINY_RUN, read_summary
from tests.test_train import run_script

pytestmark = pytest.mark.slurm


@pytest.fixture(scope="module")
def slurm_cluster() -> None:
    if shutil.which("sinfo") is None:
        pytest.skip("no SLURM here (sinfo not found): .ci/slurm-cluster.sh up brings up a one-node cluster")
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        answer = None
    if answer is None or answer.returncode != 0 or not answer.stdout.strip():
        pytest.skip("no SLURM controller answers sinfo: .ci/slurm-cluster.sh up starts one")


def slurm_sweep_command(sweep_dir, data_dir: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "-m",
        "hydra/launcher=slurm",
        *TINY_RUN,
        f"data.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
    ]


def slurm_sweep(sweep_dir, data_dir: str, *overrides: str) -> subprocess.CompletedProcess:
    command = [*slurm_sweep_command(sweep_dir, data_dir), *overrides]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_a_sweep_of_two_ddp_members_runs_on_slurm(slurm_cluster, tmp_path, data_dir):
    """Two members side by side, each a 2-task DDP job (trainer=ddp_cpu): one SLURM task per rank, rank 0 alone
    writing in the member's dir, and the summary of both."""
    sweep_dir = tmp_path / "sweep"
    result = slurm_sweep(sweep_dir, data_dir, "trainer=ddp_cpu", "latent_dim=2,3")
    assert result.returncode == 0, result.stderr[-3000:]
    script = next((sweep_dir / ".submitit").rglob("*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "--gpus-per-node" not in script
    for member in ("0", "1"):
        metrics = json.loads((sweep_dir / member / "metrics.json").read_text())
        assert metrics["world_size"] == 2 and metrics["epochs"] == 1
        assert (sweep_dir / member / ".hydra" / "config.yaml").is_file()
        log = (sweep_dir / member / "train.log").read_text()
        assert log.count("Job completed successfully") == 1, "rank 1 wrote into train.log"
    assert [(row["member"], row["status"]) for row in read_summary(sweep_dir)] == [("0", "ok"), ("1", "ok")]


@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P, which keeps the job's folder off sys.path, is 3.11+")
def test_a_slurm_job_never_imports_from_the_folder_the_command_was_typed_in(slurm_cluster, tmp_path, data_dir):
    """submitit starts each job with `<python> -u -m ...` in that folder, which `-m` would put first on sys.path: a
    cvae/ planted there is imported by no job (conf/hydra/launcher/slurm.yaml: this python, with -P)."""
    typed, marker = tmp_path / "typed", tmp_path / "planted-cvae-imported"
    (typed / "cvae").mkdir(parents=True)
    (typed / "cvae" / "__init__.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n")
    _, script, *overrides = slurm_sweep_command(tmp_path / "sweep", data_dir)
    command = [sys.executable, str(ROOT / script), *overrides]
    result = subprocess.run(command, cwd=typed, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "sweep" / "0" / "metrics.json").is_file()
    assert not marker.exists(), "a SLURM job imported the planted cvae package"


class CancelOwnJob(pl.Callback):
    """`scancel` of this sweep member's own SLURM job (array task `task`) in the middle of step 1, as a user
    would."""

    def __init__(self, task: int):
        self.task = task

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if os.environ.get("SLURM_ARRAY_TASK_ID") == str(self.task) and trainer.global_step == 1:
            subprocess.run(["scancel", f"{os.environ['SLURM_ARRAY_JOB_ID']}_{self.task}"], check=True)
            time.sleep(60)  # SLURM ends the job meanwhile


def test_a_cancelled_member_fails_the_sweep_within_a_minute_and_is_listed_failed(slurm_cluster, tmp_path, data_dir):
    sweep_dir = tmp_path / "sweep"
    started = time.monotonic()
    result = slurm_sweep(
        sweep_dir,
        data_dir,
        "latent_dim=2,3",
        f"+callbacks.cancel._target_={__name__}.CancelOwnJob",
        "+callbacks.cancel.task=1",
    )
    assert result.returncode != 0
    assert time.monotonic() - started < 120, "the launcher waited on after the cancelled job ended"
    assert "CANCELLED" in result.stderr, result.stderr[-3000:]
    rows = read_summary(sweep_dir)
    assert [(row["member"], row["status"]) for row in rows] == [("0", "ok"), ("1", "failed")]
    assert "latent_dim=3" in rows[1]["overrides"].split()


class RequeueOwnJob(pl.Callback):
    """`scontrol requeue` of this member's own SLURM job (array task `task`) in the middle of step 2 of its first
    run, as a preemption does: SLURM sends SIGTERM and runs the job again
    later."""

    def __init__(self, task: int):
        self.task = task

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        first_run = not int(os.environ.get("SLURM_RESTART_COUNT") or 0)
        if os.environ.get("SLURM_ARRAY_TASK_ID") == str(self.task) and first_run and trainer.global_step == 2:
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{self.task}"
            subprocess.run(["scontrol", "requeue", job], check=True)
            # SLURM's SIGTERM comes a moment later: wait for it here, so that it lands in this step
            deadline = time.monotonic() + 30
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.05)


def start_requeued_jobs_at_once(sweep: subprocess.Popen) -> None:
    """Until the sweep ends: a requeued job waits 2 minutes (its BeginTime) before SLURM runs it again; now."""
    while sweep.poll() is None:
        waiting = subprocess.run(["squeue", "-h", "-t", "PENDING", "-o", "%i %r"], capture_output=True, text=True)
        for job in [line.split()[0] for line in waiting.stdout.splitlines() if line.endswith("BeginTime")]:
            subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], capture_output=True)
        time.sleep(1)


def test_a_requeued_member_resumes_from_its_last_checkpoint_and_ends_as_one_never_stopped(
    slurm_cluster, tmp_path, data_dir
):
    """Two members with the same settings; SLURM requeues the second mid-epoch: it saves last.ckpt, runs again,
    goes on from there and writes the metrics.json of the first, byte for byte."""
    sweep_dir = tmp_path / "sweep"
    sweep = subprocess.Popen(
        [
            *slurm_sweep_command(sweep_dir, data_dir),
            "seed=42,42",
            "trainer.limit_train_batches=5",
            f"+callbacks.requeue._target_={__name__}.RequeueOwnJob",
            "+callbacks.requeue.task=1",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    start_requeued_jobs_at_once(sweep)
    assert sweep.returncode == 0, sweep.stderr.read()[-3000:]
    # both runs of member 1, what they printed and what they logged
    log = "".join(path.read_text() for path in sorted((sweep_dir / ".submitit").glob("*_1/*_1_0_log.*")))
    last = sweep_dir / "1" / "checkpoints" / "last.ckpt"
    assert "interrupted at epoch 0, step 3" in log and f"resuming from {last}" in log, log
    assert (sweep_dir / "1" / "metrics.json").read_bytes() == (sweep_dir / "0" / "metrics.json").read_bytes()


def test_a_member_cancelled_midway_finishes_when_the_sweep_runs_again_as_if_never_stopped(
    slurm_cluster, tmp_path, data_dir
):
    """latent_dim=2,3 on SLURM: member 1's job is cancelled (scancel) in its second epoch, after its first epoch's
    checkpoint; the sweep fails. The same command with resume.auto=true keeps member 0 as it was and resumes member
    1 from its last.ckpt, to the metrics.json of a run never stopped."""
    sweep_dir = tmp_path / "sweep"
    finished = {}

    def on_kill() -> None:
        assert (sweep_dir / "0" / "metrics.json").is_file() and not (sweep_dir / "1" / "metrics.json").exists()
        assert (sweep_dir / "1" / "checkpoints" / "last.ckpt").is_file()
        finished.update(files_of(sweep_dir / "0"))

    sweep = ["hydra/launcher=slurm", "latent_dim=2,3"]
    killed_and_run_again(sweep_dir, data_dir, on_kill, *sweep, says="CANCELLED", status=1)
    assert files_of(sweep_dir / "0") == finished, "the finished member is kept as it was"
    resumes = json.loads((sweep_dir / "1" / "resumes.json").read_text())["resumes"]
    assert [os.path.basename(resume["ckpt_path"]) for resume in resumes] == ["last.ckpt"]
    assert_as_never_stopped(sweep_dir, tmp_path, data_dir, {"1": 3})
    assert [(row["member"], row["status"]) for row in read_summary(sweep_dir)] == [("0", "ok"), ("1", "ok")]


def test_a_sweep_run_again_while_its_killed_launchers_job_runs_never_writes_into_that_member(
    slurm_cluster, tmp_path, data_dir
):
    """The launcher is SIGKILLed while member 1's job runs (held in its second epoch): SLURM runs the job on. The
    sweep run again at once keeps the finished member 0 and is refused member 1's dir, which the job holds (its
    .lock), so nothing races with it. Once that job is cancelled, the sweep run again finishes member 1 from its
    last.ckpt, to the metrics.json of a run never stopped."""
    from tests.test_resume_sweeps import SWEEP_RUN

    sweep_dir = tmp_path / "sweep"
    command = ["train.py", "-m", "hydra/launcher=slurm", "latent_dim=2,3", *SWEEP_RUN, f"data.data_dir={data_dir}"]
    command += ["resume.auto=true", f"hydra.sweep.dir={sweep_dir}"]
    held = tmp_path / "held"  # member 1's job creates it once it holds at its step 4
    env = {**os.environ, "CVAE_TEST_HOLD": "1:4", "CVAE_TEST_HELD": str(held)}
    launcher = subprocess.Popen([sys.executable, *command], cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not ((sweep_dir / "0" / "metrics.json").is_file() and held.is_file()):
        assert launcher.poll() is None and time.monotonic() < deadline, "the sweep ended before its kill"
        time.sleep(0.2)
    launcher.kill()
    launcher.wait()
    job = next(path.name for path in sorted((sweep_dir / ".submitit").glob("*_1")))
    finished = files_of(sweep_dir / "0")
    refused = run_script(*command)
    assert refused.returncode == 1, refused.stderr[-3000:]
    assert "is in use by another run" in (sweep_dir / "1" / "train.log").read_text()
    assert not (sweep_dir / "1" / "metrics.json").exists() and not (sweep_dir / "1" / "resumes.json").exists()
    subprocess.run(["scancel", job], check=True)
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        time.sleep(0.5)
    again = run_script(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    assert files_of(sweep_dir / "0") == finished, "the finished member is kept as it was"
    resumes = json.loads((sweep_dir / "1" / "resumes.json").read_text())["resumes"]
    assert [os.path.basename(resume["ckpt_path"]) for resume in resumes] == ["last.ckpt"]
    assert_as_never_stopped(sweep_dir, tmp_path, data_dir, {"1": 3})
