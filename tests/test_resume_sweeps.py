"""Runs and sweeps that finish when their command is run again with resume.auto=true (cvae/run/resume.py
launch_decision): an unfinished run resumes from its last.ckpt, a finished one is kept as it is, an empty dir
starts, another run's dir is refused; a sweep whose launcher and a member were SIGKILLed ends as one never stopped."""

import json
import os
import shutil
import signal
from pathlib import Path

import pytest
import pytorch_lightning as pl
import yaml

from cvae.errors import CheckpointError
from cvae.run.resume import FINISHED, REFUSE, RESUME, START, launch_decision
from tests.conftest import QUICK_RUN, QUICK_RUN_ANY_CALLBACKS, compose_config
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
    """SIGKILL of this very process at a step of one run, where CVAE_TEST_KILL=<run dir name>:<step> asks for it:
    with Hydra's basic launcher the members run in the launcher's process, so the launcher dies with the member."""

    def __init__(self, run_dir: str):
        self.run_dir = Path(run_dir)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        name, _, step = os.environ.get("CVAE_TEST_KILL", "").partition(":")
        if name == self.run_dir.name and trainer.global_step == int(step):
            os.kill(os.getpid(), signal.SIGKILL)


def files_of(directory: Path) -> dict[str, tuple[bytes, int]]:
    """Every file's bytes and modification time, Hydra's own records of each launch (.hydra/, its log) left out."""
    return {
        str(path.relative_to(directory)): (path.read_bytes(), path.stat().st_mtime_ns)
        for path in directory.rglob("*")
        if path.is_file() and ".hydra" not in path.parts and path.name not in ("train.log", ".lock")
    }


def killed_and_run_again(sweep_dir: Path, data_dir: str, on_kill, *sweep: str):
    """The sweep run with resume.auto=true and killed in member 1's second epoch (on_kill then checks what it left),
    then the same command again: its result."""
    command = ["train.py", "-m", *sweep, *SWEEP_RUN, f"data.data_dir={data_dir}", "resume.auto=true"]
    command.append(f"hydra.sweep.dir={sweep_dir}")
    killed = run_script(*command, env_extra={"CVAE_TEST_KILL": "1:4"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    on_kill()
    again = run_script(*command)
    assert again.returncode == 0, again.stderr[-3000:]
    return again


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
    from cvae.run.train import train

    for member, latent_dim in (("1", 3), ("2", 4)):
        reference = tmp_path / f"never_stopped_{member}"
        overrides = [*SWEEP_RUN, f"data.data_dir={data_dir}", f"latent_dim={latent_dim}"]
        train(compose_config("train", overrides, reference))
        assert (sweep_dir / member / "metrics.json").read_bytes() == (reference / "metrics.json").read_bytes()
    assert [(row["member"], row["status"]) for row in read_summary(sweep_dir)] == [
        ("0", "ok"),
        ("1", "ok"),
        ("2", "ok"),
    ]


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
