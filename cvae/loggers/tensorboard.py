"""Lightning's TensorBoardLogger, so that TensorBoard opens on the curves people look at (conf/logger/tensorboard.yaml).

TensorBoard's Time Series and Scalars dashboards sort their charts by tag and open the first two groups (a group:
the tag up to its first `/`). So that these are train/ and val/ with the -ELBO curves:

- no `epoch` chart: Lightning adds `epoch` to every logged dict; the x axis is the step already;
- no single-point `test/*` charts (they sorted first): the best checkpoint's test figures are in metrics.json;
- the rest of validation in a group after val/: `validation/` (FID and label accuracy, overall and per digit;
  active units and the KL per latent dimension). Only TensorBoard's names move; metrics.json, the CSV, MLflow and
  W&B keep the metric names;
- hparams.yaml holds the run's knobs (cvae/loggers/hparams.py gives them at the end of the run), never `{}`:
  Lightning writes the file at its first save, which comes before any hyperparameters here.
"""

from pytorch_lightning import loggers
from pytorch_lightning.utilities import rank_zero_only

from cvae.model.checkpoint import read_checkpoint

NOT_CHARTED = ("epoch", "test/")  # names, or prefixes ending in /
# the rest of validation, under a group that sorts after val/ in both dashboards (Scalars sorts `_` as it sorts `/`:
# val_generation/ came before val/ there)
MOVED_AFTER_THE_CURVES = {
    prefix: prefix.replace("val/", "validation/", 1)
    for prefix in ("val/fid", "val/label_acc", "val/active_units", "val/kl_dim/")
}


def tensorboard_tag(name: str) -> str | None:
    """The tag TensorBoard charts a metric under, None for none."""
    if name in NOT_CHARTED or name.startswith(tuple(prefix for prefix in NOT_CHARTED if prefix.endswith("/"))):
        return None
    for prefix, moved in MOVED_AFTER_THE_CURVES.items():
        if name.startswith(prefix):
            return moved + name.removeprefix(prefix)
    return name


class TensorBoardLogger(loggers.TensorBoardLogger):
    """Lightning's, with the tags of tensorboard_tag and no empty hparams.yaml; a resume (`resume_from`, the
    checkpoint it continues) writes into the same dir (the config fixes name and version), and TensorBoard drops what
    the interrupted launch logged after the checkpoint: purge_step, from the step after the checkpoint's on
    (TensorBoard purges by step alone, and the checkpoint's own step also holds the images of its epoch's
    validation, which must stay; the first batch after it, logged at that step, may stay twice)."""

    def __init__(self, save_dir: str, resume_from: str | None = None, **kwargs):
        if resume_from:
            kwargs.setdefault("purge_step", read_checkpoint(resume_from)["global_step"] + 1)
        super().__init__(save_dir, **kwargs)

    @rank_zero_only
    def log_metrics(self, metrics: dict, step: int | None = None) -> None:
        charted = {tensorboard_tag(name): value for name, value in metrics.items()}
        charted.pop(None, None)
        if charted:
            super().log_metrics(charted, step)

    @rank_zero_only
    def save(self) -> None:
        if self.hparams:  # Lightning writes hparams.yaml once, at the first save that finds none
            super().save()
        else:
            self.experiment.flush()
