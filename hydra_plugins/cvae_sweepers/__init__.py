"""Hydra finds sweepers only in the hydra_plugins namespace: this registers the project's own
(cvae.run.study.ContinuedOptunaSweeper, named by its module in conf/hparams_search/optuna.yaml)."""

from cvae.run.study import ContinuedOptunaSweeper

__all__ = ["ContinuedOptunaSweeper"]
