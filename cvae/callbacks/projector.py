"""The latent space in TensorBoard's Projector during training (cvae/explore/projector.py writes it)."""

import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger

from cvae.callbacks.images import first_validation_images, images_due
from cvae.explore.projector import add_projector
from cvae.validate import MAX_IMAGES, check_at_most, check_count


class LatentProjector(pl.Callback):
    """Every n epochs and after the last, the first `num_images` validation images into the Projector of every
    TensorBoard logger (its step is the global step, so the Projector offers each epoch's map)."""

    def __init__(self, every_n_epochs: int = 5, num_images: int = 1000):
        check_count(every_n_epochs, "callbacks.latent_projector.every_n_epochs")
        check_at_most(num_images, "callbacks.latent_projector.num_images", MAX_IMAGES)
        self.every_n_epochs, self.num_images = every_n_epochs, num_images

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.real = first_validation_images(trainer, self.num_images, pl_module.device)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not images_due(trainer, self.every_n_epochs):
            return
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                add_projector(logger.experiment, pl_module.net, *self.real, trainer.global_step)
