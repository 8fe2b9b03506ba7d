"""Lightning's TensorBoardLogger, opening on the curves people look at (conf/logger/tensorboard.yaml): TensorBoard's
dashboards sort charts by tag and open the first two groups (a tag up to its first `/`), so these are train/ and val/
with the -ELBO curves, and the Images dashboard opens on the samples. Only TensorBoard's names move; metrics.json and
the other trackers keep the metric names.

How TensorBoard 2.21 orders (its webfiles.zip): Time Series sorts every card, scalars and images together, by tag
(`/` and digits sort before any other character), groups them by the tag up to its first `/` in that order and
expands the first two groups; Scalars and Images do the same per dashboard (`_` sorts as `/` there) and open their
first two groups."""

from pytorch_lightning import loggers
from pytorch_lightning.utilities import rank_zero_only

from cvae.model.checkpoint import read_checkpoint

# the rest of validation (FID, label accuracy, active units, KL per dimension), under a group that sorts after val/ in
# both dashboards (Scalars sorts `_` as it sorts `/`: val_generation/ came before val/ there)
MOVED_AFTER_THE_CURVES = ("val/fid", "val/label_acc", "val/active_units", "val/kl_dim/")
# what a schedule sets during training: the LearningRateMonitor's lr-Adam (lr-Adam/pg1, lr-Adam-momentum, ...) and
# beta under a KL warm-up. lr-Adam sorted first of all and train/beta first in train/, above the curves; `varying`
# sorts after val/ and validation/ and before visuals/ in both dashboards
SCHEDULES = "varying/"
SCHEDULED = ("lr-", "train/beta")


def tensorboard_tag(name: str) -> str | None:
    """The tag TensorBoard charts a metric under, None for none: not `epoch`, which Lightning adds to every logged dict
    (the x axis is the step already), nor the single-point test/ charts, which sorted first (metrics.json has them)."""
    if name == "epoch" or name.startswith("test/"):
        return None
    if name.startswith(SCHEDULED):
        return SCHEDULES + name.removeprefix("train/")
    return name.replace("val/", "validation/", 1) if name.startswith(MOVED_AFTER_THE_CURVES) else name


class TensorBoardLogger(loggers.TensorBoardLogger):
    """Lightning's, with the tags of tensorboard_tag and no empty hparams.yaml (cvae/loggers/hparams.py writes it at
    the end). A resume (`resume_from`: the checkpoint) writes into the same dir (the config fixes name and version)
    and purges what the interrupted launch logged after the checkpoint: from the step after the checkpoint's, since
    TensorBoard purges by step alone and the checkpoint's own step also holds its epoch's images, which must stay."""

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
