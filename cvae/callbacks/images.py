"""What TensorBoard (and every logger that takes images) shows of a run beyond its scalars: sample grids and
reconstructions, and the latent space explored (cvae/explore/)."""

import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger

from cvae.explore.figures import (
    digit_rows,
    interpolation_images,
    latent_map_images,
    reconstruction_rows,
    style_transfer_image,
)
from cvae.explore.latent import first_of_each_digit
from cvae.sampling.prior import PriorSampler
from cvae.validate import MAX_IMAGES, check_at_most, check_count

# TensorBoard's group of pictures, after every scalar group in Time Series; in it samples/ goes as digits/, which sorts
# before exploration/ (whose 14 cards filled the Images dashboard's first page: the samples came on the second)
PICTURES = "visuals/"
PICTURE_GROUPS = {"samples/": "digits/"}


def tensorboard_image_tag(tag: str) -> str:
    """The tag TensorBoard shows a picture under; the other trackers show it as `tag` (samples/prior_by_digit)."""
    group, name = tag.split("/", 1)
    return PICTURES + PICTURE_GROUPS.get(group + "/", group + "/") + name


class SampleGrids(pl.Callback):
    """Every n epochs: prior samples (a row per digit, the same z each epoch so progress is comparable)
    and reconstructions of fixed validation images, as TensorBoard images."""

    def __init__(self, samples_per_digit: int = 10, num_reconstructions: int = 10, every_n_epochs: int = 1):
        check_count(every_n_epochs, "callbacks.sample_grids.every_n_epochs")
        check_at_most(samples_per_digit, "callbacks.sample_grids.samples_per_digit", MAX_IMAGES)
        check_at_most(num_reconstructions, "callbacks.sample_grids.num_reconstructions", MAX_IMAGES)
        self.samples_per_digit, self.num_reconstructions = samples_per_digit, num_reconstructions
        self.every_n_epochs = every_n_epochs
        self.pictures: dict[str, None] = {}  # the tags drawn, in order: train.py lists them when the run ends

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.real = first_validation_images(trainer, self.num_reconstructions, pl_module.device)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not images_due(trainer, self.every_n_epochs):
            return
        # the same noise every epoch, through the prior as it is now (a learned prior moves)
        z = PriorSampler().grid_latents(pl_module.net, self.samples_per_digit).to(pl_module.device)
        images = {
            "prior_by_digit": digit_rows(pl_module.net, z),
            "reconstructions": reconstruction_rows(pl_module.net, *self.real),
        }
        self.pictures.update(dict.fromkeys(log_images(trainer.loggers, "samples/", images, trainer.global_step)))


class LatentExploration(pl.Callback):
    """After every n-th epoch: the latent map of fixed validation images (posterior means coloured by digit, a
    PCA projection above 2 dims, and the manifold per digit for latent_dim 2), interpolations and style
    transfer, as TensorBoard images under exploration/. A second or so of CPU work, hence not every epoch."""

    def __init__(self, every_n_epochs: int = 5, num_images: int = 1000, interpolation_steps: int = 10, seed: int = 0):
        check_count(every_n_epochs, "callbacks.latent_exploration.every_n_epochs")
        check_at_most(num_images, "callbacks.latent_exploration.num_images", MAX_IMAGES)
        check_at_most(interpolation_steps, "callbacks.latent_exploration.interpolation_steps", MAX_IMAGES)
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self.interpolation_steps, self.seed = interpolation_steps, seed
        self.pictures: dict[str, None] = {}

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.real = first_validation_images(trainer, self.num_images, pl_module.device)
        self.style_sources = first_of_each_digit(self.real[1])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not images_due(trainer, self.every_n_epochs):
            return
        model, (x, y) = pl_module.net, self.real
        images = {
            **latent_map_images(model, x, y, one_per_digit=True),
            **interpolation_images(model, self.interpolation_steps, self.seed),
            "style_transfer": style_transfer_image(model, x[self.style_sources], y[self.style_sources]),
        }
        self.pictures.update(dict.fromkeys(log_images(trainer.loggers, "exploration/", images, trainer.global_step)))


def first_validation_images(trainer: pl.Trainer, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` validation images and labels (fewer if this rank's shard is smaller), on the device."""
    images, labels = [], []
    for x, y in trainer.datamodule.val_dataloader():
        images.append(x)
        labels.append(y)
        if sum(map(len, labels)) >= count:
            break
    return torch.cat(images)[:count].to(device), torch.cat(labels)[:count].to(device)


def epoch_is_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """After epochs n, 2n, ... and after the last one, so every run ends on a picture of its final model."""
    epochs_done = trainer.current_epoch + 1
    return epochs_done % every_n_epochs == 0 or epochs_done == trainer.max_epochs


def images_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """At the end of a due training epoch's validation (not the sanity check), on the rank that writes the logs."""
    fitting = not trainer.sanity_checking and trainer.is_global_zero and trainer.state.fn == "fit"
    return fitting and epoch_is_due(trainer, every_n_epochs)


def log_images(loggers: list[Logger], group: str, images: dict[str, torch.Tensor], step: int) -> list[str]:
    """Every logger that shows images gets them (C, H, W in [0, 1]) tagged `group` + name (TensorBoard's as
    tensorboard_image_tag moves them), as the same 8-bit pixels (W&B would stretch a float tensor's range to black and
    white). Returns the tags, none when no logger shows images."""
    if not any(isinstance(logger, (TensorBoardLogger, MLFlowLogger, WandbLogger)) for logger in loggers):
        return []
    for name, image in images.items():
        tag = group + name
        pixels = (image.detach().cpu() * 255).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        for logger in loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image(tensorboard_image_tag(tag), pixels, global_step=step, dataformats="HWC")
            elif isinstance(logger, MLFlowLogger):
                logger.experiment.log_image(logger.run_id, pixels, key=tag, step=step)
            elif isinstance(logger, WandbLogger):
                logger.log_image(key=tag, images=[pixels], step=step)
    return [group + name for name in images]
