"""Each rank's random streams and training-metric sums in every checkpoint, given back to each rank on resuming."""

import pytorch_lightning as pl
import torch
from lightning_utilities.core.apply_func import apply_to_collection
from pytorch_lightning.utilities import rank_zero_warn
from torchmetrics import Metric

from cvae.seeding import random_state, set_random_state, stream_seed


def gather(trainer: pl.Trainer, local: dict) -> list[dict]:
    """Every rank's `local`, in rank order, on every rank, its tensors on the CPU: a tensor pickled on cuda:k is
    unpickled onto cuda:k by every rank, which fails where each process sees one GPU (srun --gpus-per-task)."""
    local = apply_to_collection(local, torch.Tensor, torch.Tensor.cpu)
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return [local]
    gathered = [None] * trainer.world_size
    torch.distributed.all_gather_object(gathered, local)
    return gathered


class RankState(pl.Callback):
    """Each rank's training noise (its own stream seeded by (seed, rank)) and epoch sums so far, so that a run resumed
    at any step draws and sums what an uninterrupted one would have: Lightning's checkpoints hold no random state,
    and torchmetrics states are per rank."""

    def __init__(self, seed: int):
        self.seed = seed
        self.restored: list[dict] | None = None
        self.epoch_ended = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.trainer, self.pl_module = trainer, pl_module
        if stage == "fit":  # after the weights were initialised from the global seed, alike on every rank
            torch.manual_seed(stream_seed(self.seed, trainer.global_rank))

    def state_dict(self) -> dict:
        if self.restored is not None:
            # restored but not yet handed back (a checkpoint written before on_train_start): what this run goes on
            # from is the restored streams, not the freshly seeded ones
            return {"ranks": self.restored}
        module = self.pl_module
        local = {
            # an evaluation pass holds the training stream aside (see CVAELitModule.evaluation_noise)
            "random": module.held_training_noise or random_state(module.device),
            # a checkpoint at the end of an epoch (ModelCheckpoint saves before Lightning resets the epoch's sums):
            # the run resumes with the next epoch, which sums from nothing
            "metrics": {}
            if self.epoch_ended
            else {name: metric.metric_state for name, metric in training_metrics(module)},
        }
        return {"ranks": gather(self.trainer, local)}

    def load_state_dict(self, state_dict: dict) -> None:
        self.restored = state_dict["ranks"]

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, after the sanity check and after Lightning restored the loops, just before the first batch.
        if self.restored is None:
            return
        if len(self.restored) != trainer.world_size:
            rank_zero_warn(
                f"the checkpoint was written by {len(self.restored)} processes and this run has "
                f"{trainer.world_size}: the random streams go on from rank 0's, so the run is not exactly the "
                f"one that was interrupted"
            )
        mine = self.restored[trainer.global_rank if len(self.restored) == trainer.world_size else 0]
        set_random_state(mine["random"], pl_module.device)
        for name, metric in training_metrics(pl_module):
            metric.reset()
            if name in mine["metrics"]:
                metric.merge_state({key: value.to(pl_module.device) for key, value in mine["metrics"][name].items()})
        self.restored = None

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.epoch_ended = False

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # before the module logs the epoch's sums and before ModelCheckpoint (a monitoring callback, run after them)
        self.epoch_ended = True


def training_metrics(module: pl.LightningModule) -> list[tuple[str, Metric]]:
    """The torchmetrics of the training epoch, which sum over its steps (the evaluation ones start afresh)."""
    return [(name, metric) for name, metric in module.named_modules() if isinstance(metric, Metric) and "train" in name]
