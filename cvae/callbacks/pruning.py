"""Pruning while a trial trains: a member of an Optuna search (cvae/search/sweeper.py) reports its monitored metric
to its trial after every validation, through the study's storage, and stops once the study's pruner says so. The few
lines optuna-integration's Lightning callback has, for a trial that lives in another process (the search's)."""

import os
from pathlib import Path

import pytorch_lightning as pl

from cvae.callbacks import PRUNED_FILE
from cvae.files import write_json_atomic

RUN_DIR = "run_dir"  # the trial's user attribute naming its member's dir: how a member finds its trial


def trial_id(storage, study_name: str, number: int) -> int:
    """The storage's id of a study's trial number (Optuna's public Trial takes ids)."""
    return storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)


class TrialPruning(pl.Callback):
    """Rank zero reports `monitor` after each validation of fit as the trial's value at that epoch; when the pruner
    prunes, every rank stops at the end of the epoch, the run ends as any run does (test, metrics.json), and the
    trial is PRUNED. Inactive outside a search: no storage, or no trial running for this run dir."""

    def __init__(self, storage: str | None, study_name: str, monitor: str, run_dir: str, pruner=None):
        self.storage_url, self.study_name, self.monitor, self.pruner = storage, study_name, monitor, pruner
        self.run_dir = Path(run_dir)
        self.trial = None
        self.pruned_at: int | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and self.storage_url and trainer.is_global_zero:
            self.trial = self.find_trial()

    def find_trial(self):
        import optuna  # here: only a search's members load it (Hydra's start-up reads PRUNED_FILE beside this)

        storage = optuna.storages.get_storage(self.storage_url)
        study = optuna.load_study(study_name=self.study_name, storage=storage, pruner=self.pruner)
        own = os.path.abspath(self.run_dir)
        for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if trial.user_attrs.get(RUN_DIR) == own:
                return optuna.trial.Trial(study, trial_id(storage, self.study_name, trial.number))
        return None

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not self.storage_url:
            return
        import optuna

        prune = False
        value = trainer.callback_metrics.get(self.monitor)
        if self.trial is not None and value is not None:
            try:
                self.trial.report(float(value), step=trainer.current_epoch)
                prune = self.trial.should_prune()
            except optuna.exceptions.UpdateFinishedTrialError:  # failed meanwhile (its search died): run on
                self.trial = None
        if trainer.strategy.broadcast(prune):  # rank zero decides for all: the ranks stop together
            trainer.should_stop = True
            self.pruned_at = trainer.current_epoch

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.trial is None or self.pruned_at is None:
            return
        import optuna

        self.trial.study.tell(self.trial.number, state=optuna.trial.TrialState.PRUNED, skip_if_finished=True)
        write_json_atomic(self.run_dir / PRUNED_FILE, {"trial": self.trial.number, "epoch": self.pruned_at})
