"""The latent space in TensorBoard's Projector: the posterior means of fixed images with their digit labels and
thumbnails (a sprite), so a user can rotate it in 3-D, colour it by digit and run PCA, t-SNE or UMAP in the
browser (`tensorboard --logdir <run dir>`, Projector tab). During training from fixed validation images every n
epochs and after the last; from `python evaluate.py projector=true` for the first test images."""

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from cvae.callbacks import epoch_is_due, first_validation_images, logs_images_now
from cvae.generate import pixels, posterior_means
from cvae.model import CVAE, IMAGE_SHAPE

TAG = "latent/posterior_mean"


def add_projector(writer: SummaryWriter, model: CVAE, x: torch.Tensor, y: torch.Tensor, step: int) -> None:
    """One Projector checkpoint: a point per image, labelled with its digit, drawn as the image itself."""
    writer.add_embedding(
        posterior_means(model, x, y),
        metadata=y.tolist(),
        label_img=pixels(x).cpu().view(-1, *IMAGE_SHAPE),
        global_step=step,
        tag=TAG,
    )


def write_projector(model: CVAE, x: torch.Tensor, y: torch.Tensor, output_dir: str | Path) -> None:
    with SummaryWriter(log_dir=str(output_dir)) as writer:
        add_projector(writer, model, x, y, step=0)


class LatentProjector(pl.Callback):
    """Every n epochs and after the last, the first `num_images` validation images into the Projector of every
    TensorBoard logger (its step is the global step, so the Projector offers each epoch's map)."""

    def __init__(self, every_n_epochs: int = 5, num_images: int = 1000):
        self.every_n_epochs, self.num_images = every_n_epochs, num_images

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.real = first_validation_images(trainer, self.num_images, pl_module.device)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (logs_images_now(trainer) and epoch_is_due(trainer, self.every_n_epochs)):
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                add_projector(logger.experiment, pl_module.model, *self.real, trainer.global_step)
