"""Lightning callbacks: what TensorBoard shows of a run beyond its scalars."""
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import TensorBoardLogger

from cvae.images import digit_rows, digit_rows_latents, reconstruction_rows


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
