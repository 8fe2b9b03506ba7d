"""One Optuna study driven through its public API (ask/tell) by any number of search processes sharing its storage:
`n_trials` bounds the study whatever their number, the trials of a process that died are failed by Optuna's
heartbeat (and retried up to `max_retry`), and each member's dir is named by its trial's number. Hydra's Optuna
sweeper runs n_trials per process and has neither pruning nor heartbeats, hence this one (docs/sweeps.md)."""

import math
import os
import sys
import threading
import time
import warnings

import optuna
from hydra.core.utils import JobStatus
from hydra.utils import instantiate  # Hydra's: the entry point's execution whitelist (cvae.trust) checks the sampler
from omegaconf import DictConfig, OmegaConf
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from cvae.callbacks.pruning import RUN_DIR, trial_id
from cvae.errors import ConfigError
from cvae.files import write_bytes_atomic
from cvae.search.space import search_space
from cvae.trust import first_line
from cvae.validate import check_choice, check_count

RESULTS_FILE = "optimization_results.yaml"
# Optuna's heartbeat and retry are "experimental" (since 2.8 and 2.9), and its way to do these things; and it warns
# that heartbeats go with study.optimize, which records them itself: this process records them (Heartbeat)
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)  # what counts, as MaxTrialsCallback counts


def search(
    launcher,
    config: DictConfig,
    arguments: list[str],
    *,
    study_name: str,
    storage: str | None,
    n_trials: int,
    n_jobs: int = 1,
    direction: str = "minimize",
    sampler=None,
    pruner=None,
    params=None,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    max_retry: int = 0,
) -> None:
    """Trials until the study holds n_trials (this process's and any other's); then, while trials of other processes
    still run, waits for them (failing those whose process died), so the best it writes is the study's."""
    try:
        for key, count, minimum in (("n_trials", n_trials, 1), ("n_jobs", n_jobs, 1), ("max_retry", max_retry, 0)):
            check_count(count, f"hydra.sweeper.{key}", minimum)
        for key, seconds in (("heartbeat_interval", heartbeat_interval), ("grace_period", grace_period)):
            if seconds is not None:
                check_count(seconds, f"hydra.sweeper.{key}")
        check_choice(direction, ("minimize", "maximize"), "hydra.sweeper.direction")
        space, fixed = search_space(OmegaConf.to_container(params or {}), arguments)
        if pruner is not None and storage is None:
            raise ConfigError(
                "hydra.sweeper.storage=null keeps the study in this process, where members cannot report to it: "
                "pruning needs a storage (the default SQLite file), or set hydra.sweeper.pruner=null"
            )
        sampler = None if sampler is None else instantiate(sampler)  # before the storage: a refusal creates no file
        backend = None if storage is None else open_storage(storage, heartbeat_interval, grace_period, max_retry)
        study = optuna.create_study(
            study_name=study_name, storage=backend, sampler=sampler, direction=direction, load_if_exists=True
        )
    except Exception as error:  # one line: a ConfigError names its key; Hydra's whitelist says why in several lines
        said = str(error) if isinstance(error, ConfigError) else f"hydra.sweeper: {' '.join(str(error).split())}"
        print(f"error: {said}", file=sys.stderr)
        sys.exit(1)
    done = len(counted(study.get_trials(deepcopy=False), FINISHED))
    if done:
        print(f"study {study_name} holds {done} finished trials of {n_trials}: continuing it")
    heartbeat = Heartbeat(backend, study_name, heartbeat_interval)
    said_waiting = False
    try:
        while True:
            batch = claim(study, space, n_trials, n_jobs, heartbeat)
            if batch:
                run(study, batch, space, fixed, launcher, str(config.hydra.sweep.dir), heartbeat)
                continue
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if not running or not heartbeat.enabled:  # without heartbeats a dead process's trial looks alive
                break
            if not said_waiting:
                print(f"waiting for trials {', '.join(str(t.number) for t in running)} of other search processes")
                said_waiting = True
            time.sleep(min(heartbeat_interval, 10))
    finally:
        heartbeat.stop()
    write_results(study, str(config.hydra.sweep.dir))


def open_storage(url: str, heartbeat_interval: int | None, grace_period: int | None, max_retry: int) -> RDBStorage:
    retry = RetryHeartbeatStaleTrialCallback(max_retry) if max_retry else None
    try:
        return RDBStorage(
            url,
            heartbeat_interval=heartbeat_interval,
            grace_period=grace_period,
            heartbeat_stale_trial_callback=retry,
        )
    except Exception as error:  # a file that is no database, a server that refuses
        raise ConfigError(f"hydra.sweeper.storage={url} cannot be opened ({first_line(error)})") from error


def counted(trials: list, states: tuple = (*FINISHED, TrialState.RUNNING)) -> list:
    """The trials in `states` that count towards n_trials: a failed trial that was retried counts through its retry."""
    retried = {RetryHeartbeatStaleTrialCallback.retried_trial_number(trial) for trial in trials}
    return [trial for trial in trials if trial.state in states and trial.number not in retried]


def claim(study, space: dict, n_trials: int, n_jobs: int, heartbeat: "Heartbeat") -> list:
    """Up to n_jobs new trials, none past n_trials whatever other processes ask at the same time: a trial asked past
    them (two processes asking for the last one) goes back to WAITING, where a later search's ask() takes it."""
    optuna.storages.fail_stale_trials(study)
    batch = []
    while len(batch) < n_jobs and len(counted(study.get_trials(deepcopy=False))) < n_trials:
        trial = study.ask(space)  # a WAITING trial first (a retry, one given back)
        heartbeat.add(trial.number)
        alive = counted(study.get_trials(deepcopy=False), (*FINISHED, TrialState.RUNNING, TrialState.WAITING))
        if sum(other.number < trial.number for other in alive) >= n_trials:
            heartbeat.remove(trial.number)
            heartbeat.storage.set_trial_state_values(
                trial_id(heartbeat.storage, study.study_name, trial.number), TrialState.WAITING
            )
            break
        batch.append(trial)
    return batch


def run(study, batch: list, space: dict, fixed: list[str], launcher, sweep_dir: str, heartbeat: "Heartbeat") -> None:
    """The batch's members, each in the dir named by its trial's number; each trial told its member's value (a failed
    member's is nan)."""
    jobs = []
    for trial in batch:
        trial.set_user_attr(RUN_DIR, os.path.abspath(os.path.join(sweep_dir, str(trial.number))))
        jobs.append([*(f"{name}={trial.params[name]}" for name in space), *fixed, f"hydra.sweep.subdir={trial.number}"])
    returns = launcher.launch(jobs, initial_job_idx=batch[0].number)
    told = {trial.number for trial in study.get_trials(deepcopy=False, states=FINISHED)}  # pruned: told by its member
    for trial, result in zip(batch, returns):
        value = float(result.return_value) if result.status == JobStatus.COMPLETED else math.nan
        if trial.number not in told and math.isnan(value):
            study.tell(trial, state=TrialState.FAIL)
        elif trial.number not in told:
            study.tell(trial, value)
        heartbeat.remove(trial.number)


def write_results(study, sweep_dir: str) -> None:
    """The study's best trial (of every process) in <sweep dir>/optimization_results.yaml, with its member's dir."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        print(f"study {study.study_name} has no complete trial: no {RESULTS_FILE} written")
        return
    best = study.best_trial
    results = {"name": "optuna", "best_params": best.params, "best_value": best.value, "best_trial": best.number}
    results[RUN_DIR] = best.user_attrs.get(RUN_DIR)
    write_bytes_atomic(os.path.join(sweep_dir, RESULTS_FILE), OmegaConf.to_yaml(OmegaConf.create(results)).encode())


class Heartbeat:
    """A thread recording the heartbeat of each trial this process runs, every interval (Optuna records them only
    inside study.optimize, which cannot hand a Hydra launcher several members at once)."""

    def __init__(self, storage: RDBStorage | None, study_name: str, interval: int | None):
        self.storage, self.study_name, self.interval = storage, study_name, interval
        self.enabled = storage is not None and interval is not None
        self.trials: set[int] = set()
        self.stopped = threading.Event()
        if self.enabled:
            threading.Thread(target=self.beat, daemon=True).start()

    def add(self, number: int) -> None:
        if self.enabled:
            self.trials.add(number)
            self.record(number)  # at once: a trial that never had a heartbeat is never failed

    def remove(self, number: int) -> None:
        self.trials.discard(number)

    def record(self, number: int) -> None:
        self.storage.record_heartbeat(trial_id(self.storage, self.study_name, number))

    def beat(self) -> None:
        while not self.stopped.wait(self.interval):
            for number in list(self.trials):
                self.record(number)

    def stop(self) -> None:
        self.stopped.set()
