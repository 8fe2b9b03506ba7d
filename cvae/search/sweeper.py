"""The Hydra sweeper of `hparams_search=optuna` (conf/hydra/sweeper/optuna_study.yaml), registered by the
`hydra.plugins` entry point in pyproject.toml. Hydra imports this module at every start-up: optuna is imported only
when a search runs (cvae/search/study.py)."""

import inspect
import sys

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper


class OptunaStudySweeper(Sweeper):
    """One Optuna study, shared by every search process pointed at its storage (cvae.search.study.search)."""

    def __init__(self, **settings):
        self.settings = settings  # the keys of conf/hydra/sweeper/optuna_study.yaml, as search() takes them

    def setup(self, *, hydra_context, task_function, config) -> None:
        self.config = config
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def sweep(self, arguments: list[str]) -> None:
        from cvae.search.study import search

        try:
            inspect.signature(search).bind(self.launcher, self.config, arguments, **self.settings)
        except TypeError as error:  # a key search() does not take: one line, not a traceback
            print(f"error: hydra.sweeper: {error} (its keys: conf/hydra/sweeper/optuna_study.yaml)", file=sys.stderr)
            sys.exit(1)
        search(self.launcher, self.config, arguments, **self.settings)
