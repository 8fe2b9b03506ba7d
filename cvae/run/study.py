"""An Optuna search run again continues its study (its database: conf/hparams_search/optuna.yaml) up to n_trials,
not n_trials more. Hydra takes sweepers only from its plugin namespace: hydra_plugins/cvae_sweepers has this."""

import sys

from hydra_plugins.hydra_optuna_sweeper.optuna_sweeper import OptunaSweeper

from cvae.trust import first_line

# trials that count towards n_trials, as the plugin counts the ones it launches (failed ones too)
DONE = ("COMPLETE", "PRUNED", "FAIL")


class ContinuedOptunaSweeper(OptunaSweeper):
    """hydra-optuna-sweeper's OptunaSweeper, continuing the study its storage already holds."""

    def sweep(self, arguments: list[str]) -> None:
        search = self.sweeper  # the plugin's implementation: its public n_trials and job_idx drive its loop
        try:
            trials = earlier_trials(search.storage, search.study_name)
        except Exception as error:  # a file that is no database, a server that refuses: said, not a traceback
            print(
                f"error: hydra.sweeper.storage={search.storage} holds no Optuna study it can read "
                f"({first_line(error)})",
                file=sys.stderr,
            )
            sys.exit(1)
        done = sum(trial.state.name in DONE for trial in trials)
        if trials:
            print(f"study {search.study_name} holds {done} finished trials of {search.n_trials}: continuing it")
        search.n_trials = max(0, search.n_trials - done)
        search.job_idx = len(trials)  # member folders go on from the earlier launches', never into one of theirs
        return super().sweep(arguments)


def earlier_trials(storage, study_name: str | None) -> list:
    import optuna  # here: Hydra imports this module (hydra_plugins/cvae_sweepers) at every start-up

    if storage is None or study_name not in optuna.study.get_all_study_names(storage):
        return []
    return optuna.load_study(study_name=study_name, storage=storage).get_trials(deepcopy=False)
