"""Lightning's TensorBoardLogger, so that TensorBoard opens on the curves people look at (conf/logger/tensorboard.yaml).

- No `epoch` scalar: Lightning adds one to every logged dict; TensorBoard's x axis is the step already, and as a
  chart of its own (sorted first) it opened the Scalars and Time Series dashboards.
- hparams.yaml holds the run's knobs (cvae/run/hparams.py gives them at the end of the run), never `{}`: Lightning
  writes the file at its first save, which comes before any hyperparameters here.
"""

from pytorch_lightning import loggers
from pytorch_lightning.utilities import rank_zero_only

LIGHTNING_CONVENIENCE_KEYS = ("epoch",)


class TensorBoardLogger(loggers.TensorBoardLogger):
    """Lightning's, less the `epoch` chart and the empty hparams.yaml."""

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        shown = {name: value for name, value in metrics.items() if name not in LIGHTNING_CONVENIENCE_KEYS}
        if shown:
            super().log_metrics(shown, step)

    @rank_zero_only
    def save(self) -> None:
        if self.hparams:  # Lightning writes hparams.yaml once, at the first save that finds none
            super().save()
        else:
            self.experiment.flush()
