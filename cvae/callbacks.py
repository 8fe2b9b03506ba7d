"""Lightning callbacks: what TensorBoard shows of a run beyond its scalars."""
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from cvae.generate import first_of_each_digit
from cvae.images import (digit_rows, digit_rows_latents, interpolation_images, latent_map_images, reconstruction_rows,
                         style_transfer_image)


class SampleGrids(pl.Callback):
    """Every n epochs: prior samples (a row per digit, the same z each epoch so progress is comparable)
    and reconstructions of fixed validation images, as TensorBoard images."""

    def __init__(self, samples_per_digit: int = 10, num_reconstructions: int = 10, every_n_epochs: int = 1):
        self.samples_per_digit, self.num_reconstructions = samples_per_digit, num_reconstructions
        self.every_n_epochs = every_n_epochs

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.z = digit_rows_latents(pl_module.model.latent_dim, self.samples_per_digit).to(pl_module.device)
        x, y = next(iter(trainer.datamodule.val_dataloader()))
        self.real = x[: self.num_reconstructions].to(pl_module.device), y[: self.num_reconstructions].to(pl_module.device)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        if trainer.current_epoch % self.every_n_epochs:
            return
        grids = {
            "samples/prior_by_digit": digit_rows(pl_module.model, self.z),
            "samples/reconstructions": reconstruction_rows(pl_module.model, *self.real),
        }
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for tag, grid in grids.items():
                    logger.experiment.add_image(tag, grid.cpu(), global_step=trainer.global_step)


class LatentExploration(pl.Callback):
    """After every n-th epoch: the latent map of fixed validation images (posterior means coloured by digit, a
    PCA projection above 2 dims, and the manifold per digit for latent_dim 2), interpolations and style
    transfer, as TensorBoard images under exploration/. A second or so of CPU work, hence not every epoch."""

    def __init__(self, every_n_epochs: int = 5, num_images: int = 1000, interpolation_steps: int = 10, seed: int = 0):
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self.interpolation_steps, self.seed = interpolation_steps, seed

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        x, y = next(iter(trainer.datamodule.val_dataloader()))  # at most one batch: the map stays cheap
        self.real = x[: self.num_images], y[: self.num_images]
        self.style_sources = first_of_each_digit(self.real[1])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # after epochs n, 2n, ...: a run of n * k epochs ends on a picture of its final model
        if not logs_images_now(trainer) or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        model, (x, y) = pl_module.model, self.real
        images = {
            **latent_map_images(model, x, y),
            **interpolation_images(model, self.interpolation_steps, self.seed),
            "style_transfer": style_transfer_image(model, x[self.style_sources], y[self.style_sources]),
        }
        add_tensorboard_images(trainer, {f"exploration/{name}": image for name, image in images.items()})


def logs_images_now(trainer: pl.Trainer) -> bool:
    """True at the end of a real training epoch's validation, on the rank that writes the logs."""
    return not trainer.sanity_checking and trainer.is_global_zero and trainer.state.fn == "fit"


def add_tensorboard_images(trainer: pl.Trainer, images: dict[str, torch.Tensor]) -> None:
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            for tag, image in images.items():
                logger.experiment.add_image(tag, image.cpu(), global_step=trainer.global_step)
