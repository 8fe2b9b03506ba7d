"""Runs and sweeps that finish when their command is run again with resume.auto=true (cvae/run/resume.py
launch_decision): an unfinished run resumes from its last.ckpt, a finished one is kept as it is, an empty dir
starts, another run's dir is refused; a sweep whose launcher and a member were SIGKILLed ends as one never stopped."""

import fcntl
import json
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml

from cvae.errors import CheckpointError
from cvae.run.resume import FINISHED, REFUSE, RESUME, START, launch_decision
from tests.conftest import QUICK_RUN, QUICK_RUN_ANY_CALLBACKS, ROOT, compose_config
from tests.test_sweeps import TINY_RUN, read_summary
from tests.test_train import run_script

# two short epochs: a member killed in its second one has the first's last.ckpt to resume from
SWEEP_RUN = [
    *QUICK_RUN_ANY_CALLBACKS,
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "callbacks=model_checkpoint",
    "logger=csv",
    # planted in every launch (the re-run is the same command); it kills only where CVAE_TEST_KILL says
    "+callbacks.kill._target_=tests.test_resume_sweeps.KillAt",
    "+callbacks.kill.run_dir=${paths.output_dir}",
]


class KillAt(pl.Callback):
    """SIGKILL of the sweep's launcher at a step of one run, where CVAE_TEST_KILL=<run dir name>:<step> asks for it.
    With Hydra's basic launcher the members run in the launcher's process, so the launcher dies with the member; a
    joblib member runs in a worker, the launcher's child, and lives on; a SLURM job is cancelled instead (scancel),
    as a user would, and SLURM sends it SIGTERM. A member that lives on holds at that step, as
    CVAE_TEST_HOLD=<run dir name>:<step> holds a run, until SIGTERM stops it (at most HOLD_SECONDS), so that it is
    still mid-run when the launcher's death or the cancellation reaches it. Where CVAE_TEST_HELD names a file, the
    held run creates it once it holds, and the kill waits for it: on a loaded machine the other members' pace does
    not decide whether the held one has reached its step."""

    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        held = Path(os.environ["CVAE_TEST_HELD"]) if os.environ.get("CVAE_TEST_HELD") else None
        if self.asked("CVAE_TEST_HOLD", trainer) and held:
            held.touch()
        if self.asked("CVAE_TEST_KILL", trainer) and held:
            wait_for(held.is_file, HOLD_SECONDS, "the held run never reached its step")
        if self.asked("CVAE_TEST_KILL", trainer) and os.environ.get("SLURM_ARRAY_JOB_ID"):
            job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
            subprocess.run(["scancel", job], check=True)
        elif self.asked("CVAE_TEST_KILL", trainer):
            launcher = multiprocessing.parent_process()  # the joblib worker's parent; None: this very process
            os.kill(launcher.pid if launcher else os.getpid(), signal.SIGKILL)
        if self.asked("CVAE_TEST_KILL", trainer) or self.asked("CVAE_TEST_HOLD", trainer):
            deadline = time.monotonic() + HOLD_SECONDS
            while not trainer.received_sigterm and time.monotonic() < deadline:
                time.sleep(0.05)

    def asked(self, variable: str, trainer) -> bool:
        name, _, step = os.environ.get(variable, "").partition(":")
        return name == self.run_dir.name and trainer.global_step == int(step)


HOLD_SECONDS = 180  # a safety net only: SIGTERM ends the hold


def wait_for(condition, seconds: float, failure: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


# how long the processes a killed launcher started may live on: a member's look at its launcher, the step it stops
# at, and then the worker's end (cvae/callbacks/orphans.py GRACE_PERIOD)
OUTLIVE_SECONDS = 20


def session_processes(session: int) -> list[int]:
    """The live processes of a session (Linux: /proc), zombies left out."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[3]) == session and fields[0] != "Z":
            found.append(int(stat.parent.name))
    return found


def run_in_own_session(command: list[str], env_extra: dict) -> tuple[int, str, list[int]]:
    """`python <command>` in a session of its own, as a shell runs a job: its exit status, its stderr, and the
    processes of its session alive OUTLIVE_SECONDS after it ended (then killed, so that no test leaves any)."""
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a process left behind would hold a pipe open
        launcher = subprocess.Popen(
            [sys.executable, *command],
            cwd=ROOT,
            env={**os.environ, **env_extra},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        launcher.wait(timeout=600)
        deadline = time.monotonic() + OUTLIVE_SECONDS
        while (outlived := session_processes(launcher.pid)) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in outlived:
            os.kill(pid, signal.SIGKILL)
        stderr.seek(0)
        return launcher.returncode, stderr.read().decode(errors="replace"), outlived


def files_of(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time, Hydra's own records of each launch (.hydra/, its log) left out."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in directory.rglob("*")
        if path.is_file() and ".hydra" not in path.parts and path.name not in ("train.log", ".lock")
    }


def killed_and_run_again(sweep_dir: Path, data_dir: str, on_kill, *sweep: str, kill=None, says="", status=-9):
    """The sweep run with resume.auto=true and its launcher killed where `kill` asks KillAt to (by default in member
    1's second epoch), ending with `status`, no process of it left behind, its stderr holding `says` (on_kill then
    checks what it left), then the same command again: its result."""
    command = ["train.py", "-m", *sweep, *SWEEP_RUN, f"data.data_dir={data_dir}", "resume.auto=true"]
    command.append(f"hydra.sweep.dir={sweep_dir}")
    returncode, stderr, outlived = run_in_own_session(command, kill or {"CVAE_TEST_KILL": "1:4"})
    assert returncode == status, stderr[-3000:]
    assert not outlived, f"processes of the killed launcher lived on: {outlived}"
    assert says in stderr, stderr[-3000:]
    on_kill()
    again = run_script(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    return again


def assert_as_never_stopped(sweep_dir: Path, tmp_path: Path, data_dir: str, latent_dims: dict, *launcher: str) -> None:
    """Each member's metrics.json byte-identical to that of a run of its latent_dim never stopped: run alone here,
    or, given a launcher's settings, in a sweep on that launcher (a joblib worker trains on fewer threads, whose
    sums differ in the last bits)."""
    from cvae.run.train import train

    settings = [*SWEEP_RUN, f"data.data_dir={data_dir}"]
    references = {member: tmp_path / "never_stopped" / str(job) for job, member in enumerate(latent_dims)}
    if launcher:
        sweep = ["-m", *launcher, f"latent_dim={','.join(map(str, latent_dims.values()))}", *settings]
        result = run_script("train.py", *sweep, f"hydra.sweep.dir={tmp_path / 'never_stopped'}")
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        for member, latent_dim in latent_dims.items():
            train(compose_config("train", [*settings, f"latent_dim={latent_dim}"], references[member]))
    for member, reference in references.items():
        assert (sweep_dir / member / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()


def test_a_sweep_killed_midway_finishes_when_run_again_as_if_never_stopped(tmp_path, data_dir):
    """latent_dim=2,3,4 with the basic launcher: killed (launcher and member 1) in member 1's second epoch, so
    member 0 is finished, member 1 interrupted after its first epoch's checkpoint and member 2 never started. The
    same command again finishes it: member 0 untouched, 1 resumed, 2 started, each metrics.json byte-identical to
    a run never stopped."""
    sweep_dir = tmp_path / "sweep"
    finished = {}

    def on_kill() -> None:
        assert (sweep_dir / "0" / "metrics.json").is_file() and not (sweep_dir / "1" / "metrics.json").exists()
        assert (sweep_dir / "1" / "checkpoints" / "last.ckpt").is_file() and not (sweep_dir / "2").exists()
        finished.update(files_of(sweep_dir / "0"))

    again = killed_and_run_again(sweep_dir, data_dir, on_kill, "latent_dim=2,3,4")
    assert files_of(sweep_dir / "0") == finished, "the finished member is kept as it was"
    assert f"{sweep_dir / '0'} holds this run, finished" in again.stdout
    resumes = json.loads((sweep_dir / "1" / "resumes.json").read_text())["resumes"]
    assert [Path(resume["ckpt_path"]).name for resume in resumes] == ["last.ckpt"]
    assert not (sweep_dir / "2" / "resumes.json").exists(), "the member that never started starts"
    assert_as_never_stopped(sweep_dir, tmp_path, data_dir, {"1": 3, "2": 4})
    assert [(row["member"], row["status"]) for row in read_summary(sweep_dir)] == [
        ("0", "ok"),
        ("1", "ok"),
        ("2", "ok"),
    ]


def test_a_joblib_sweep_whose_launcher_was_killed_leaves_no_worker_and_finishes_when_run_again(tmp_path, data_dir):
    """hydra/launcher=joblib n_jobs=2, latent_dim=2,3,4: member 1 holds in its second epoch, so member 2 runs in
    member 0's worker once member 0 finished, and SIGKILLs the launcher in its second epoch. Neither worker lives on:
    each member stops as SIGTERM stops a run (last.ckpt at that step). The same command again keeps member 0 as it
    was and resumes 1 and 2, each metrics.json byte-identical to a run never stopped."""
    sweep_dir = tmp_path / "sweep"
    finished = {}

    def on_kill() -> None:
        assert (sweep_dir / "0" / "metrics.json").is_file()
        for member in ("1", "2"):
            assert (sweep_dir / member / "checkpoints" / "last.ckpt").is_file()
            assert not (sweep_dir / member / "metrics.json").exists(), f"member {member} trained on to its end"
        finished.update(files_of(sweep_dir / "0"))

    joblib = ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]
    kill = {"CVAE_TEST_HOLD": "1:4", "CVAE_TEST_KILL": "2:4", "CVAE_TEST_HELD": str(tmp_path / "held")}
    says = "is gone: its worker"
    again = killed_and_run_again(sweep_dir, data_dir, on_kill, *joblib, "latent_dim=2,3,4", kill=kill, says=says)
    assert files_of(sweep_dir / "0") == finished, "the finished member is kept as it was"
    assert f"{sweep_dir / '0'} holds this run, finished" in again.stdout
    for member in ("1", "2"):
        resumes = json.loads((sweep_dir / member / "resumes.json").read_text())["resumes"]
        assert [Path(resume["ckpt_path"]).name for resume in resumes] == ["last.ckpt"]
    assert_as_never_stopped(sweep_dir, tmp_path, data_dir, {"1": 3, "2": 4}, *joblib)
    assert [(row["member"], row["status"]) for row in read_summary(sweep_dir)] == [
        ("0", "ok"),
        ("1", "ok"),
        ("2", "ok"),
    ]


def test_a_sweep_member_whose_dir_another_process_holds_is_refused_in_one_line_and_the_sweep_goes_on(
    tmp_path, data_dir
):
    """Member 1's dir locked by another process (as a SLURM job of a killed launch holds it while it runs on; its
    .hydra/ record is that launch's): that member is refused in one line and trains nothing there; member 0 runs;
    the sweep ends failed, as for any member refused."""
    sweep_dir = tmp_path / "sweep"
    (sweep_dir / "1" / ".hydra").mkdir(parents=True)
    for record in ("config.yaml", "hydra.yaml", "overrides.yaml"):  # Hydra rewrites them: no new entry in .hydra/
        (sweep_dir / "1" / ".hydra" / record).write_text("{}\n")
    with open(sweep_dir / "1" / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.write("4242\n")
        lock.flush()
        sweep = ["-m", "latent_dim=2,3", *TINY_RUN, f"data.data_dir={data_dir}", f"hydra.sweep.dir={sweep_dir}"]
        result = run_script("train.py", *sweep)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors[0] == (
        f"error: member 1: hydra.run.dir={sweep_dir / '1'} is in use by another run (pid 4242); wait for it to end "
        f"or choose another dir"
    )
    assert sorted(path.name for path in (sweep_dir / "1").iterdir()) == [".hydra", ".lock", "train.log"], "Hydra's own"
    assert [(row["member"], row["status"]) for row in read_summary(sweep_dir)] == [("0", "ok"), ("1", "failed")]


def test_run_again_into_a_finished_run_does_nothing_and_says_so_in_one_line(tmp_path, trained_run, data_dir):
    finished, _ = trained_run
    run_dir = tmp_path / "run"
    shutil.copytree(finished, run_dir)
    before = files_of(run_dir)
    result = run_script(
        "train.py",
        *QUICK_RUN,
        f"data.data_dir={data_dir}",
        "latent_dim=3",
        "resume.auto=true",
        f"hydra.run.dir={run_dir}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert [line for line in result.stdout.splitlines() if "finished" in line] == [
        f"{run_dir} holds this run, finished (metrics.json): kept as it is, nothing trained"
    ]
    assert files_of(run_dir) == before


def test_auto_resume_refuses_another_runs_dir(tmp_path, trained_run, data_dir):
    """latent_dim=4 into the finished latent_dim=3 run, and into it cut back to its last.ckpt: refused, naming
    the difference, before anything is trained or written."""
    from cvae.run.train import train

    finished, _ = trained_run
    for keep_metrics in (True, False):
        run_dir = tmp_path / f"run_{keep_metrics}"
        shutil.copytree(finished, run_dir)
        if not keep_metrics:
            (run_dir / "metrics.json").unlink()
        before = files_of(run_dir)
        overrides = [*QUICK_RUN, f"data.data_dir={data_dir}", "latent_dim=4", "resume.auto=true"]
        cfg = compose_config("train", overrides, run_dir)
        with pytest.raises(CheckpointError, match="latent_dim=3 but the config asks for latent_dim=4"):
            train(cfg)
        assert files_of(run_dir) == before


def test_launch_decision_follows_what_the_dir_holds(tmp_path, trained_run, monkeypatch):
    """start into an empty dir; resume an unfinished run from its last.ckpt; keep a finished one (continue it when
    asked for more epochs than it trained); refuse a dir
    with results without resume.auto (as before) or with another run's checkpoint named by hand; a requeued SLURM
    job resumes as resume.auto=true does (the same code)."""
    finished, _ = trained_run
    unfinished = tmp_path / "unfinished"
    shutil.copytree(finished, unfinished)
    (unfinished / "metrics.json").unlink()

    def decide(directory: Path, *overrides: str):
        return tuple(launch_decision(directory, compose_config("train", list(overrides), directory)))[:2]

    last = str(unfinished / "checkpoints" / "last.ckpt")
    assert decide(tmp_path / "empty", "resume.auto=true") == (START, None)
    assert decide(unfinished, "resume.auto=true") == (RESUME, last)
    assert decide(finished, "resume.auto=true", "trainer.max_epochs=2") == (FINISHED, None)  # as it was trained
    finished_last = str(finished / "checkpoints" / "last.ckpt")
    assert decide(finished, "resume.auto=true", "trainer.max_epochs=3") == (RESUME, finished_last)  # one epoch more
    assert decide(unfinished) == (REFUSE, None) and decide(finished) == (REFUSE, None)
    assert decide(unfinished, f"ckpt_path={last}") == (RESUME, last)
    assert decide(finished, f"ckpt_path={last}") == (REFUSE, last)
    assert decide(tmp_path / "new", f"ckpt_path={last}") == (START, last)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert decide(unfinished) == (RESUME, last) and decide(finished, "trainer.max_epochs=2") == (FINISHED, None)


def test_an_optuna_search_killed_midway_continues_its_study_in_the_sweep_dir_to_n_trials(tmp_path, data_dir):
    """n_trials=3, killed (launcher and trial) in trial 1's second epoch: run again, the search continues the study
    of the SQLite file in the sweep dir (the default storage) instead of starting 3 more trials. Trial 1, whose
    heartbeat stopped, is failed and (max_retry=1) run again as trial 2 with its parameters; trial 3 ends the 3."""
    import optuna

    sweep_dir = tmp_path / "search"
    search = ["hparams_search=optuna", "hydra.sweeper.n_trials=3", "hydra.sweeper.heartbeat_interval=1"]
    again = killed_and_run_again(sweep_dir, data_dir, lambda: None, *search, "hydra.sweeper.max_retry=1")
    study = optuna.load_study(study_name="cvae", storage=f"sqlite:///{sweep_dir}/optuna.db")
    states = [trial.state.name for trial in study.trials]
    assert states == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"], "trial 1 was killed, retried as 2; 3 ends the 3"
    assert study.trials[2].params == study.trials[1].params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(study.trials[2]) == 1
    assert "holds 1 finished trials of 3: continuing it" in again.stdout
    values = {trial.number: trial.value for trial in study.trials if trial.state.name == "COMPLETE"}
    for number, value in values.items():
        assert json.loads((sweep_dir / str(number) / "metrics.json").read_text())["val/nelbo"] == value
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_value"] == min(values.values())
    assert [row["status"] for row in read_summary(sweep_dir)] == ["ok", "failed", "ok", "ok"]


def test_a_sweep_run_again_otherwise_is_refused_before_anything_is_written(tmp_path, data_dir):
    """resume.auto finishes the same sweep: with an override changed, multirun.yaml, the members' .hydra/ and the
    summary would say the new value beside the old results. Refused in one line; the sweep dir as it was."""
    from tests.test_rundir import one_error_line, snapshot

    sweep_dir = tmp_path / "sweep"
    sweep = ["train.py", "-m", "latent_dim=2,3", *TINY_RUN, f"data.data_dir={data_dir}", f"hydra.sweep.dir={sweep_dir}"]
    assert run_script(*sweep).returncode == 0
    before = snapshot(sweep_dir)
    for changed in (["lr=0.01"], ["latent_dim=2,4"], ["model.beta=2.0"]):
        again = [*sweep, "resume.auto=true"]
        again = (
            [arg for arg in again if not arg.startswith("latent_dim=")] if changed[0].startswith("latent") else again
        )
        refused = run_script(*again, *changed)
        assert "holds a sweep launched otherwise" in one_error_line(refused)
        assert snapshot(sweep_dir) == before
    assert run_script(*sweep, "resume.auto=true").returncode == 0, "the same command finishes (here: keeps) it"


def test_a_finished_run_without_a_checkpoint_is_kept_only_for_its_own_settings(tmp_path, data_dir):
    """callbacks=none: no checkpoint to compare; the run's .hydra/ record of its settings is compared instead."""
    from tests.test_rundir import one_error_line, snapshot

    run_dir = tmp_path / "run"
    command = ["train.py", *TINY_RUN, "callbacks=none", f"data.data_dir={data_dir}", f"hydra.run.dir={run_dir}"]
    assert run_script(*command).returncode == 0
    before = snapshot(run_dir)
    other = run_script(*command, "latent_dim=4", "resume.auto=true")
    assert "latent_dim=2 but this launch asks for latent_dim=4" in one_error_line(other)
    same = run_script(*command, "resume.auto=true")
    assert same.returncode == 0 and "holds this run, finished" in same.stdout
    assert {key: value for key, value in snapshot(run_dir).items() if not key.startswith(".hydra")} == {
        key: value for key, value in before.items() if not key.startswith(".hydra")
    }
    more = run_script(*command, "trainer.max_epochs=2", "resume.auto=true")
    assert "without a checkpoints/last.ckpt to train on from" in one_error_line(more)


def test_a_finished_run_asked_for_more_epochs_continues_to_them_as_if_never_stopped(tmp_path, data_dir):
    """1 epoch, then the same command with trainer.max_epochs=2 and resume.auto=true: it continues from its
    last.ckpt, and ends byte-identical (metrics.json) to a run of 2 epochs never stopped."""
    settings = [*TINY_RUN, f"data.data_dir={data_dir}"]
    continued, straight = tmp_path / "continued", tmp_path / "straight"
    assert run_script("train.py", *settings, f"hydra.run.dir={continued}").returncode == 0
    again = run_script("train.py", *settings, "trainer.max_epochs=2", "resume.auto=true", f"hydra.run.dir={continued}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert run_script("train.py", *settings, "trainer.max_epochs=2", f"hydra.run.dir={straight}").returncode == 0
    assert json.loads((continued / "metrics.json").read_text())["epochs"] == 2
    assert (continued / "metrics.json").read_bytes() == (straight / "metrics.json").read_bytes()
