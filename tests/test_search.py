"""The project's Optuna search (cvae/search/): one study shared by several search processes on a real PostgreSQL
server (.ci/postgres.sh up), n_trials bounding the study whatever asks at the same time, a dead process's trial failed
by the heartbeat (and retried), and trials pruned while they train."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from types import SimpleNamespace

import optuna
import pytest
import torch
import yaml
from optuna.trial import TrialState

from cvae.callbacks.pruning import RUN_DIR, TrialPruning
from cvae.search.study import Heartbeat, claim
from tests.conftest import ROOT
from tests.test_resume_sweeps import SWEEP_RUN
from tests.test_slurm import slurm_cluster  # noqa: F401 -- the fixture, for the SLURM case
from tests.test_sweeps import read_summary
from tests.test_train import run_script

POSTGRES = f"postgresql+psycopg://postgres@127.0.0.1:{os.environ.get('CVAE_POSTGRES_PORT', '55432')}/postgres"
# one short epoch per trial, no pruning unless a test asks (MedianPruner waits for 5 finished trials)
SEARCH_RUN = ["hparams_search=optuna", *SWEEP_RUN, "trainer.max_epochs=1"]


@pytest.fixture(scope="module")
def postgres() -> str:
    try:
        optuna.storages.RDBStorage(POSTGRES)
    except Exception as error:
        pytest.skip(f"no PostgreSQL server at {POSTGRES} ({type(error).__name__}): `.ci/postgres.sh up` starts one")
    return POSTGRES


def search_command(sweep_dir, data_dir: str, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "train.py",
        "-m",
        *SEARCH_RUN,
        f"data.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
        *overrides,
    ]


def members(*sweep_dirs) -> dict[int, object]:
    """Trial number -> member dir, over the sweep dirs of every search process; no number twice."""
    found = [(int(path.name), path) for sweep_dir in sweep_dirs for path in sweep_dir.iterdir() if path.name.isdigit()]
    assert len({number for number, _ in found}) == len(found), f"a trial number twice: {found}"
    return dict(found)


@pytest.mark.postgres
def test_two_search_processes_share_one_study_on_postgresql_and_run_exactly_n_trials(tmp_path, data_dir, postgres):
    """Two processes started at once on one study of n_trials=5: 5 trials run in all, each number once, each in its
    own process's sweep dir, each trial's value its member's val/nelbo, and the best in each process's results file.
    The two finish their trials at the same moment, so they often race for the last one: the trial asked past
    n_trials is left WAITING, never run (no dir), for a later search to take first."""
    study_name = f"two-{uuid.uuid4().hex[:8]}"
    settings = [
        f"hydra.sweeper.storage={postgres}",
        f"hydra.sweeper.study_name={study_name}",
        "hydra.sweeper.n_trials=5",
    ]
    processes = [
        subprocess.Popen(
            search_command(tmp_path / name, data_dir, *settings),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [process.communicate(timeout=600) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    study = optuna.load_study(study_name=study_name, storage=postgres)
    ran = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(ran) == 5 and len(study.trials) <= 7, [(trial.number, trial.state) for trial in study.trials]
    assert {trial.state for trial in study.trials} <= {TrialState.COMPLETE, TrialState.WAITING}
    found = members(tmp_path / "a", tmp_path / "b")
    assert sorted(found) == sorted(trial.number for trial in ran), "a dir for each trial run, none for a WAITING one"
    assert all(members(tmp_path / name) for name in ("a", "b")), "both processes ran trials"
    for trial in ran:
        assert trial.user_attrs[RUN_DIR] == str(found[trial.number])
        assert json.loads((found[trial.number] / "metrics.json").read_text())["val/nelbo"] == trial.value
    summaries = [row for name in ("a", "b") for row in read_summary(tmp_path / name)]
    assert min(float(row["val/nelbo"]) for row in summaries) == study.best_value
    for name in ("a", "b"):
        results = yaml.safe_load((tmp_path / name / "optimization_results.yaml").read_text())
        assert (results["best_value"], results["best_trial"]) == (study.best_value, study.best_trial.number)


@pytest.mark.postgres
def test_a_search_process_killed_mid_trial_has_its_trial_failed_by_the_heartbeat_and_the_total_reached(
    tmp_path, data_dir, postgres
):
    """Process A is SIGKILLed in its first trial (trial 0). Process B, on the same study of n_trials=3, fails trial 0
    once its heartbeat is 2 s old (waiting for it if B gets there first), runs trials 1 and 2: 3 trials in all."""
    study_name = f"kill-{uuid.uuid4().hex[:8]}"
    settings = [
        f"hydra.sweeper.storage={postgres}",
        f"hydra.sweeper.study_name={study_name}",
        "hydra.sweeper.n_trials=3",
    ]
    settings += ["hydra.sweeper.heartbeat_interval=1", "hydra.sweeper.grace_period=2"]
    killed = run_script(*search_command(tmp_path / "a", data_dir, *settings)[1:], env_extra={"CVAE_TEST_KILL": "0:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    study = optuna.load_study(study_name=study_name, storage=postgres)
    assert [trial.state for trial in study.trials] == [TrialState.RUNNING], "the killed process left its trial"
    survivor = run_script(*search_command(tmp_path / "b", data_dir, *settings)[1:])
    assert survivor.returncode == 0, survivor.stderr[-3000:]
    states = [trial.state for trial in optuna.load_study(study_name=study_name, storage=postgres).trials]
    assert states == [TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert sorted(members(tmp_path / "b")) == [1, 2] and sorted(members(tmp_path / "a")) == [0]


def test_a_trial_asked_past_n_trials_by_a_racing_process_goes_back_to_waiting_and_runs_next(tmp_path):
    """Another process asks between this one's count and its ask (the last trial): this one's trial is past n_trials,
    so it is not run but left WAITING; the next search asks for it, and it runs then as trial 1."""
    storage = f"sqlite:///{tmp_path}/racing.db"
    ours = optuna.create_study(study_name="race", storage=optuna.storages.RDBStorage(storage))
    theirs = optuna.load_study(study_name="race", storage=storage)
    asking = ours.ask
    ours.ask = lambda *space: (theirs.ask(), asking(*space))[1]  # the other process asks first, at the worst moment
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    heartbeat = Heartbeat(optuna.storages.RDBStorage(storage), "race", None)
    assert claim(ours, space, 1, 1, heartbeat) == []
    assert [trial.state for trial in ours.trials] == [TrialState.RUNNING, TrialState.WAITING]
    ours.ask = asking
    theirs.tell(0, 1.0)
    assert claim(ours, space, 1, 1, heartbeat) == [], "n_trials=1 is reached: the WAITING trial stays for later"
    [trial] = claim(ours, space, 2, 1, heartbeat)
    assert trial.number == 1 and [t.state for t in ours.trials] == [TrialState.COMPLETE, TrialState.RUNNING]


def test_a_stale_trial_is_retried_with_its_parameters_and_counts_once(tmp_path):
    """max_retry=1: a trial whose process stopped beating is failed at the next claim and asked again as a new trial
    with the same parameters; n_trials counts the pair once."""
    storage = optuna.storages.RDBStorage(
        f"sqlite:///{tmp_path}/retry.db",
        heartbeat_interval=1,
        grace_period=1,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(1),
    )
    study = optuna.create_study(study_name="retry", storage=storage)
    space = {"lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)}
    dying = Heartbeat(storage, "retry", 1)
    [dead] = claim(study, space, 1, 1, dying)
    dying.stop()  # the process dies: its trial's last heartbeat is at most a second old
    time.sleep(2.5)
    living = Heartbeat(storage, "retry", 60)
    [retry] = claim(study, space, 1, 1, living)
    living.stop()
    assert [trial.state for trial in study.trials] == [TrialState.FAIL, TrialState.RUNNING]
    assert retry.number == 1 and retry.params == dead.params
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(study.trials[1]) == 0


@pytest.mark.parametrize(
    "launcher",
    [
        pytest.param([], id="basic"),
        pytest.param(["hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "hydra.sweeper.n_jobs=2"], id="joblib"),
        pytest.param(["hydra/launcher=slurm"], id="slurm", marks=pytest.mark.slurm),
    ],
)
def test_trials_pruned_while_they_train_stop_at_the_pruned_epoch_and_leave_a_usable_run(
    launcher, tmp_path, data_dir, request
):
    """ThresholdPruner(upper=1) from the command line, after one warm-up epoch: each trial reports its epoch's
    val/nelbo (the member's own logged value) through the study's storage, wherever the launcher runs it, is pruned
    at epoch 1 of 3, stops there, ends its run (test metrics, checkpoints) and is listed "pruned at epoch 1"; the
    study's trials are PRUNED."""
    if "hydra/launcher=slurm" in launcher:
        request.getfixturevalue("slurm_cluster")
    sweep_dir = tmp_path / "search"
    pruner = ["hydra.sweeper.pruner._target_=optuna.pruners.ThresholdPruner", "+hydra.sweeper.pruner.upper=1.0"]
    pruner.append("+hydra.sweeper.pruner.n_warmup_steps=1")
    settings = ["hydra.sweeper.n_trials=2", "trainer.max_epochs=3", *pruner, *launcher]
    command = search_command(sweep_dir, data_dir, *settings)
    result = run_script(*command[1:])
    assert result.returncode == 0, result.stderr[-3000:]
    study = optuna.load_study(study_name="cvae", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert [trial.state for trial in study.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    for trial in study.trials:
        member = sweep_dir / str(trial.number)
        assert json.loads((member / "pruned.json").read_text()) == {"trial": trial.number, "epoch": 1}
        metrics = json.loads((member / "metrics.json").read_text())
        assert metrics["epochs"] == 2 and "test/nelbo" in metrics and (member / "checkpoints" / "last.ckpt").is_file()
        logged = [line.split(",") for line in (member / "metrics.csv").read_text().splitlines()]
        column, epoch = logged[0].index("val/nelbo"), logged[0].index("epoch")
        per_epoch = {int(row[epoch]): float(row[column]) for row in logged[1:] if row[column]}
        assert trial.intermediate_values == pytest.approx(per_epoch, rel=1e-6)
    assert [row["status"] for row in read_summary(sweep_dir)] == ["pruned at epoch 1", "pruned at epoch 1"]
    assert "has no complete trial: no optimization_results.yaml written" in result.stdout


def test_pruning_without_a_storage_is_one_line_before_any_trial(tmp_path, data_dir):
    result = run_script(*search_command(tmp_path / "s", data_dir, "hydra.sweeper.storage=null")[1:])
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error: ")] == [
        "error: hydra.sweeper.storage=null keeps the study in this process, where members cannot "
        "report to it: pruning needs a storage (the default SQLite file), or set hydra.sweeper.pruner=null"
    ]
    assert not [path for path in (tmp_path / "s").iterdir() if path.name.isdigit()]


def test_the_sweeper_is_found_where_the_package_is_installed_not_only_from_the_checkout(tmp_path):
    """Hydra finds it through the package's entry point: from a folder with no hydra_plugins/ in reach."""
    code = (
        "from hydra.core.plugins import Plugins; from hydra.plugins.sweeper import Sweeper; "
        "print([f'{c.__module__}.{c.__name__}' for c in Plugins.instance().discover(Sweeper)])"
    )
    found = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "cvae.search.sweeper.OptunaStudySweeper" in found.stdout and not found.stderr


def test_a_member_whose_trial_was_failed_elsewhere_trains_on_and_reports_no_more(tmp_path):
    """A SLURM job goes on after its search process died, and its trial is failed by the heartbeat: its next report
    would raise in Optuna; the member keeps training (its run dir ends complete) and reports nothing more."""
    storage = f"sqlite:///{tmp_path}/failed.db"
    study = optuna.create_study(study_name="s", storage=storage)
    trial = study.ask()
    trial.set_user_attr(RUN_DIR, str(tmp_path / "0"))
    pruning = TrialPruning(storage, "s", "val/nelbo", str(tmp_path / "0"), optuna.pruners.MedianPruner())
    assert pruning.find_trial().number == 0, "the member finds its trial by its run dir"
    pruning.trial = pruning.find_trial()
    study.tell(0, state=TrialState.FAIL)  # what the heartbeat does once the search process is gone
    trainer = SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
        callback_metrics={"val/nelbo": torch.tensor(100.0)},
        current_epoch=3,
        strategy=SimpleNamespace(broadcast=lambda value: value),
        should_stop=False,
    )
    pruning.on_validation_end(trainer, None)
    assert pruning.trial is None and trainer.should_stop is False
    assert optuna.load_study(study_name="s", storage=storage).trials[0].intermediate_values == {}
