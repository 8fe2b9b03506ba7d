"""Callbacks every training run gets, whatever its callbacks group: no training on from NaN weights, and a
checkpoint to resume from when the run is interrupted."""

from pathlib import Path

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from cvae.errors import DivergenceError
from cvae.files import shown

STACKED = 256  # steps' losses joined into one tensor


def last_checkpoint_path(trainer: pl.Trainer) -> Path:
    checkpoints = trainer.checkpoint_callback.dirpath if trainer.checkpoint_callback else None
    return Path(checkpoints or Path(trainer.default_root_dir) / "checkpoints") / "last.ckpt"


class StopOnDivergence(pl.Callback):
    """Stops training when a step's loss was NaN or infinite, naming the epoch and step, before any checkpoint is
    written from the broken weights: checkpoints/last.ckpt stays the last good one.

    Each step only keeps a reference to its loss (a check per step would be a host-device sync per step on a GPU,
    and even a flag updated on the device costs a few kernels a step); the epoch's losses are checked before every
    validation, at the end of every epoch and before every checkpoint, where the weights are checked too."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.on_train_epoch_start(trainer, pl_module)  # a run resumed mid-epoch starts with no epoch start

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.counted_from_step = trainer.global_step
        self.stacked: list[torch.Tensor] = []  # this epoch's losses, STACKED steps in a tensor, then the latest
        self.latest: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs, batch, batch_idx) -> None:
        self.latest.append((outputs["loss"] if isinstance(outputs, dict) else outputs).detach())
        if len(self.latest) == STACKED:  # a long epoch keeps a tensor per STACKED steps, not a tensor per step
            self.stacked.append(torch.stack(self.latest))
            self.latest = []

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:  # no validation, images or FID of NaN weights
            self.check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.check(trainer, pl_module)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: dict) -> None:
        if trainer.state.fn == "fit":  # raising here stops the checkpoint from being written
            self.check(trainer, pl_module)

    def check(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not hasattr(self, "latest"):  # no training yet
            return
        parts = [*self.stacked, torch.stack(self.latest)] if self.latest else self.stacked
        losses = torch.cat(parts) if parts else torch.empty(0)  # no step yet this epoch: only the weights are checked
        bad = (~torch.isfinite(losses)).nonzero()
        if len(bad):
            bad_batch = int(bad[0])
            step = self.counted_from_step + bad_batch // trainer.accumulate_grad_batches
            what = f"the loss became {losses[bad_batch].item()} at epoch {trainer.current_epoch}, step {step}"
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
        exception.add_note(f"resume with ckpt_path={last}")  # for the entry point's one-line message
        if trainer.is_global_zero:  # printed, as every line of this project's own (the console shows no INFO)
            print(f"interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}; saved {shown(last)}")
