"""Lightning callbacks: what TensorBoard (and every logger that takes images) shows of a run beyond its scalars."""

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from pytorch_lightning.utilities.exceptions import SIGTERMException

from cvae.data import split_tensors
from cvae.errors import ConfigError, DivergenceError
from cvae.generate import first_of_each_digit
from cvae.images import (
    digit_rows,
    interpolation_images,
    latent_map_images,
    reconstruction_rows,
    style_transfer_image,
)
from cvae.loggers import log_images
from cvae.quality import balanced_labels, conditional_generation_metrics, decode_at
from cvae.sampler import PriorSampler, Sampler


class SampleGrids(pl.Callback):
    """Every n epochs: prior samples (a row per digit, the same z each epoch so progress is comparable)
    and reconstructions of fixed validation images, as TensorBoard images."""

    def __init__(self, samples_per_digit: int = 10, num_reconstructions: int = 10, every_n_epochs: int = 1):
        self.samples_per_digit, self.num_reconstructions = samples_per_digit, num_reconstructions
        self.every_n_epochs = every_n_epochs

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.real = first_validation_images(trainer, self.num_reconstructions, pl_module.device)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (logs_images_now(trainer) and epoch_is_due(trainer, self.every_n_epochs)):
            return
        log_images(
            trainer.loggers,
            {
                "samples/prior_by_digit": digit_rows(pl_module.model, self.prior_grid_latents(pl_module)),
                "samples/reconstructions": reconstruction_rows(pl_module.model, *self.real),
            },
            trainer.global_step,
        )

    def prior_grid_latents(self, pl_module: pl.LightningModule) -> torch.Tensor:
        """The same noise every epoch, through the prior as it is now (a learned prior moves)."""
        return PriorSampler().grid_latents(pl_module.model, self.samples_per_digit).to(pl_module.device)


class GenerationQuality(pl.Callback):
    """Every n epochs and after the last, and on trainer.validate (train.py's pass over the best checkpoint, for
    metrics.json), val/fid and val/label_acc (overall and per digit): class-balanced samples, the same noise each
    time, against the real validation images, whose features are extracted once. z comes from `sampler`: the
    prior, or an ex-post mixture refitted to the training images each time.

    Under DDP each rank generates its share of the samples and reads its shard of the validation images;
    the torchmetrics states gather them all, so every rank logs the same figures."""

    def __init__(
        self,
        every_n_epochs: int = 5,
        num_samples: int = 10_000,
        features: str = "mnist",
        inception_weights: str | None = None,
        seed: int = 0,
        sampler: Sampler | None = None,
    ):
        if every_n_epochs <= 0:
            raise ConfigError(f"callbacks.generation_quality.every_n_epochs={every_n_epochs} must be positive")
        balanced_labels(num_samples)  # refuse a bad count before training starts
        self.every_n_epochs, self.num_samples, self.seed = every_n_epochs, num_samples, seed
        self.features, self.inception_weights = features, inception_weights
        self.sampler = sampler or PriorSampler()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage in ("fit", "validate") and not hasattr(self, "metrics"):
            self.metrics = conditional_generation_metrics(self.features, self.inception_weights).to(pl_module.device)
            self.has_real_features = False

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # due epochs of training, and trainer.validate (train.py's pass over the best checkpoint for metrics.json)
        due = trainer.state.fn == "validate" or (
            trainer.state.fn == "fit" and epoch_is_due(trainer, self.every_n_epochs)
        )
        if trainer.sanity_checking or not due:
            return
        device = pl_module.device
        if not self.has_real_features:  # this rank's shard, at once: features in chunks, whatever the batch size
            x, y = (torch.cat(parts).to(device) for parts in zip(*trainer.datamodule.val_dataloader()))
            self.metrics.update(x, y, real=True)
            self.has_real_features = True
        shard = slice(trainer.global_rank, None, trainer.world_size)
        self.sampler.fit(pl_module.model, *split_tensors(trainer.datamodule, "train"))
        labels = balanced_labels(self.num_samples)
        z = self.sampler.latents(pl_module.model, labels, self.seed)[shard]
        labels = labels[shard].to(device)
        self.metrics.update(decode_at(pl_module.model, labels, z), labels, real=False)
        for name, value in self.metrics.compute().items():
            pl_module.log(f"val/{name}", value)
        self.metrics.reset_generated()


class LatentExploration(pl.Callback):
    """After every n-th epoch: the latent map of fixed validation images (posterior means coloured by digit, a
    PCA projection above 2 dims, and the manifold per digit for latent_dim 2), interpolations and style
    transfer, as TensorBoard images under exploration/. A second or so of CPU work, hence not every epoch."""

    def __init__(self, every_n_epochs: int = 5, num_images: int = 1000, interpolation_steps: int = 10, seed: int = 0):
        self.every_n_epochs, self.num_images = every_n_epochs, num_images
        self.interpolation_steps, self.seed = interpolation_steps, seed

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.real = first_validation_images(trainer, self.num_images, pl_module.device)
        self.style_sources = first_of_each_digit(self.real[1])

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (logs_images_now(trainer) and epoch_is_due(trainer, self.every_n_epochs)):
            return
        model, (x, y) = pl_module.model, self.real
        images = {
            **latent_map_images(model, x, y),
            **interpolation_images(model, self.interpolation_steps, self.seed),
            "style_transfer": style_transfer_image(model, x[self.style_sources], y[self.style_sources]),
        }
        log_images(
            trainer.loggers, {f"exploration/{name}": image for name, image in images.items()}, trainer.global_step
        )


def first_validation_images(trainer: pl.Trainer, count: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `count` validation images and labels (fewer if this rank's shard is smaller), on the device."""
    images, labels, found = [], [], 0
    for x, y in trainer.datamodule.val_dataloader():
        images.append(x[: count - found])
        labels.append(y[: count - found])
        found += len(labels[-1])
        if found == count:
            break
    return torch.cat(images).to(device), torch.cat(labels).to(device)


def epoch_is_due(trainer: pl.Trainer, every_n_epochs: int) -> bool:
    """After epochs n, 2n, ... and after the last one, so every run ends on a picture of its final model."""
    epochs_done = trainer.current_epoch + 1
    return epochs_done % every_n_epochs == 0 or epochs_done == trainer.max_epochs


def logs_images_now(trainer: pl.Trainer) -> bool:
    """True at the end of a real training epoch's validation, on the rank that writes the logs."""
    return not trainer.sanity_checking and trainer.is_global_zero and trainer.state.fn == "fit"


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    checkpoints = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else None
    return Path(checkpoints or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"


class StopOnDivergence(pl.Callback):
    """Stops training when a step's loss was NaN or infinite, naming the epoch and step, before any checkpoint is
    written from the broken weights: checkpoints/last.ckpt stays the last good one.

    Each step only updates a flag on the device (a check per step would be a host-device sync per step on a GPU);
    the flag is read before every validation, at the end of every epoch and before every checkpoint, where the
    weights are checked too."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.on_train_epoch_start(trainer, pl_module)  # a run resumed mid-epoch starts with no epoch start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counted_from_step = trainer.global_step
        self.batches = torch.zeros((), dtype=torch.long, device=pl_module.device)
        self.first_bad_batch = torch.full((), -1, dtype=torch.long, device=pl_module.device)
        self.bad_loss = torch.zeros((), device=pl_module.device)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        loss = (outputs["loss"] if isinstance(outputs, dict) else outputs).detach()
        first = ~torch.isfinite(loss) & (self.first_bad_batch < 0)
        self.first_bad_batch = torch.where(first, self.batches, self.first_bad_batch)
        self.bad_loss = torch.where(first, loss, self.bad_loss)
        self.batches += 1

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # no validation, images or FID of NaN weights
            self.check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == "fit":  # raising here stops the checkpoint from being written
            self.check(trainer, pl_module)

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not hasattr(self, "first_bad_batch"):  # no training step yet
            return
        bad_batch = int(self.first_bad_batch)
        if bad_batch >= 0:
            step = self.counted_from_step + bad_batch // trainer.accumulate_grad_batches
            what = f"the loss became {self.bad_loss.item()} at epoch {trainer.current_epoch}, step {step}"
        elif not all(torch.isfinite(p).all() for p in pl_module.parameters()):
            what = f"the weights became non-finite in epoch {trainer.current_epoch}"
        else:
            return
        last = last_checkpoint_path(trainer)
        kept = f"the last good checkpoint is {last}" if last.is_file() else "no checkpoint was written before it"
        raise DivergenceError(f"{what}; {kept}. Lower lr or model.beta and train again")


class CheckpointOnInterrupt(pl.Callback):
    """Ctrl-C or SIGTERM during training: save checkpoints/last.ckpt, so `ckpt_path=<it>` resumes the run."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or not isinstance(exception, (KeyboardInterrupt, SIGTERMException)):
            return
        last = last_checkpoint_path(trainer)
        trainer.save_checkpoint(last)
        rank_zero_info(
            f"interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}; saved {last}: "
            f"resume with ckpt_path={last}"
        )
