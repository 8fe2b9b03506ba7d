"""FID and label accuracy of generated digits while training, and of the best checkpoint for metrics.json."""

import pytorch_lightning as pl
import torch

from cvae.callbacks.images import epoch_is_due
from cvae.data.mnist import split_tensors
from cvae.metrics import FEATURE_EXTRACTORS, RESIZES
from cvae.metrics.generation import (
    balanced_labels,
    conditional_generation_metrics,
    reference_cache_folder,
    reference_features,
)
from cvae.sampling.prior import PriorSampler, Sampler, decode
from cvae.validate import MAX_SAMPLES, check_at_most, check_choice, check_count


class GenerationQuality(pl.Callback):
    """Every n epochs and after the last, and on trainer.validate (train.py's pass over the best checkpoint, for
    metrics.json), val/fid and val/label_acc (overall and per digit): class-balanced samples, the same noise each
    time, against the real validation images, whose features are extracted once (Inception's: read from the machine's
    cache when it holds them, as evaluate.py's test features are). z comes from `sampler`: the
    prior, or an ex-post mixture refitted to the training images each time. Under DDP each rank generates its share
    and reads its shard; the torchmetrics states gather them all, so every rank logs the same figures."""

    def __init__(
        self,
        every_n_epochs: int = 5,
        num_samples: int = 10_000,
        features: str = "mnist",
        inception_weights: str | None = None,
        resize: str = "tf1",
        reference_cache: bool = True,
        cache_dir: str | None = None,
        seed: int = 0,
        sampler: Sampler | None = None,
    ):
        check_count(every_n_epochs, "callbacks.generation_quality.every_n_epochs")
        check_at_most(num_samples, "callbacks.generation_quality.num_samples", MAX_SAMPLES, multiple_of=10, minimum=10)
        check_choice(features, FEATURE_EXTRACTORS, "callbacks.generation_quality.features")
        self.resize = check_choice(resize, RESIZES, "callbacks.generation_quality.resize")
        self.cache = reference_cache_folder(reference_cache, cache_dir, "callbacks.generation_quality")
        self.every_n_epochs, self.num_samples, self.seed = every_n_epochs, num_samples, seed
        self.features, self.inception_weights = features, inception_weights
        self.sampler = sampler or PriorSampler()

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage in ("fit", "validate") and not hasattr(self, "metrics"):
            metrics = conditional_generation_metrics(self.features, self.inception_weights, self.resize)
            self.metrics = metrics.to(pl_module.device)
            self.has_real_features = False
            self.measured: tuple[list[torch.Tensor], dict[str, float]] | None = None  # (weights, their figures)

    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        due_epoch = trainer.state.fn == "fit" and epoch_is_due(trainer, self.every_n_epochs)
        if trainer.sanity_checking or not (due_epoch or trainer.state.fn == "validate"):
            return
        device = pl_module.device
        if not self.has_real_features:  # this rank's shard, at once: features in chunks, whatever the batch size
            x, y = (torch.cat(parts).to(device) for parts in zip(*trainer.datamodule.val_dataloader()))
            self.metrics.update(x, y, real=True, features=reference_features(self.metrics.extractor, x, y, self.cache))
            self.has_real_features = True
        # The same weights give the same figures (the same noise, the same real images): train.py's pass over the
        # best checkpoint, when that is the last epoch's, is told what the last epoch measured, not a pass more.
        weights = [tensor.detach().clone() for tensor in pl_module.net.state_dict().values()]
        if self.measured is None or not all(map(torch.equal, weights, self.measured[0])):
            self.measured = weights, self.measure(trainer, pl_module)
        for name, value in self.measured[1].items():
            pl_module.log(f"val/{name}", value)

    def measure(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, float]:
        shard = slice(trainer.global_rank, None, trainer.world_size)
        self.sampler.fit(pl_module.net, *split_tensors(trainer.datamodule, "train"))
        labels = balanced_labels(self.num_samples)
        z = self.sampler.latents(pl_module.net, labels, self.seed)[shard]
        labels = labels[shard].to(pl_module.device)
        self.metrics.update(decode(pl_module.net, labels, z, batch_size=2000), labels, real=False)
        figures = self.metrics.compute()
        self.metrics.reset_generated()
        return figures
