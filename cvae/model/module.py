"""The LightningModule: a thin shell that trains the CVAE on its ELBO and logs exact per-split means."""

from functools import partial

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric

from cvae.errors import ConfigError
from cvae.model.cvae import CVAE, negative_elbo
from cvae.model.posterior import PosteriorStats
from cvae.seeding import random_state, set_random_state, stream_seed

ELBO_TERMS = ("nelbo", "recon", "kl")
EVAL_STAGES = ("val", "test")


class CVAELitModule(pl.LightningModule):
    def __init__(
        self,
        latent_dim: int = 2,
        hidden_dims: tuple[int, ...] = (512, 256),
        optimizer: partial | None = None,
        beta: float = 1.0,
        kl_warmup_epochs: int = 0,
        free_bits: float = 0.0,
        compile: bool = False,
        eval_seed: int = 0,
        **model_options,
    ):
        """model_options: CVAE's architecture, channels and learned_prior (see cvae/model/cvae.py)."""
        super().__init__()
        hidden_dims = [int(h) for h in hidden_dims]  # plain ints, so a checkpoint loads with weights_only
        if "channels" in model_options:
            model_options["channels"] = [int(c) for c in model_options["channels"]]
        # The optimizer is a factory, not a hyperparameter: the checkpoint keeps only what rebuilds the model.
        # Not sent to the loggers: cvae.hparams gives them the whole run's knobs, each once.
        self.save_hyperparameters(ignore=["optimizer"], logger=False)
        self.model = CVAE(latent_dim, hidden_dims, **model_options)
        self.optimizer = optimizer
        # nan_strategy="disable": no NaN check, which is a host-device sync per step on a GPU (a NaN loss stops
        # the run anyway); a NaN would show in the mean instead of being dropped
        self.train_nelbo = MeanMetric(nan_strategy="disable")
        # Means over every image of the split (MeanMetric of per-image values), synced across DDP ranks.
        self.eval_means = nn.ModuleDict(
            {stage: nn.ModuleDict({term: MeanMetric() for term in ELBO_TERMS}) for stage in EVAL_STAGES}
        )
        self.posterior_stats = nn.ModuleDict({stage: PosteriorStats(latent_dim) for stage in EVAL_STAGES})
        self.held_training_noise: dict | None = None  # the training stream, set aside during an evaluation pass

    def on_fit_start(self) -> None:
        if self.hparams.compile:  # torch.compile of forward, in place: parameter names (checkpoints) unchanged
            self.model.compile()

    def kl_weight(self) -> float:
        """beta, ramped up linearly, step by step, over the first kl_warmup_epochs."""
        warmup = self.hparams.kl_warmup_epochs
        if warmup <= 0:
            return self.hparams.beta
        epochs_done = self.global_step / max(1, self.trainer.num_training_batches)
        return self.hparams.beta * min(1.0, epochs_done / warmup)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        terms = negative_elbo(self.model, x, y)
        # Free bits: KL below the floor (per dimension, batch mean) is not penalised, so units stay active.
        kl = terms["kl_dims"].mean(dim=0).clamp(min=self.hparams.free_bits).sum()
        beta = self.kl_weight()
        loss = terms["recon"].mean() + beta * kl
        nelbo = terms["nelbo"].detach()
        self.train_nelbo.update(nelbo)
        if self.step_is_shown(batch_idx):
            self.log("train/nelbo_step", nelbo.mean(), prog_bar=True)
        return loss

    def step_is_shown(self, batch_idx: int) -> bool:
        """Whether anyone sees this step's train/nelbo_step: the loggers write every log_every_n_steps, the
        progress bar redraws every refresh_rate batches and at the epoch's end. A self.log call on the other
        steps would cost Lightning's bookkeeping (a fraction of a ms on a ~10 ms CPU step) for nothing."""
        trainer = self.trainer
        every = trainer.log_every_n_steps
        if trainer.should_stop or (every > 0 and (self.global_step + 1) % every == 0):  # as Lightning decides
            return True
        bar = trainer.progress_bar_callback
        if bar is None or not bar.is_enabled:
            return False
        refresh_rate = max(1, getattr(bar, "refresh_rate", 1))
        return (batch_idx + 1) % refresh_rate == 0 or batch_idx + 1 == trainer.num_training_batches

    def on_train_epoch_end(self) -> None:
        # Once per epoch, not per step: every self.log call costs Lightning bookkeeping on the hot path.
        self.log("train/nelbo", self.train_nelbo)
        self.log("train/beta", self.kl_weight())

    def evaluation_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        terms = negative_elbo(self.model, x, y)
        for term, mean in self.eval_means[stage].items():
            mean.update(terms[term])
            self.log(f"{stage}/{term}", mean, on_step=False, on_epoch=True, prog_bar=term == "nelbo")
        self.posterior_stats[stage].update(terms["mu"], terms["logvar"], *self.model.prior(y))

    def log_posterior_stats(self, stage: str) -> None:
        """Posterior-collapse diagnostics: how many latent units are in use, and the KL each one carries."""
        stats = self.posterior_stats[stage].compute()  # already summed over DDP ranks: the same on every rank
        self.log(f"{stage}/active_units", stats["active_units"].item())
        self.log_dict({f"{stage}/kl_dim/{dim}": kl.item() for dim, kl in enumerate(stats["kl_per_dim"])})
        self.posterior_stats[stage].reset()

    def begin_evaluation_noise(self) -> None:
        """Evaluation noise (z of validation and test, and of the callbacks at their epoch end) comes from its own
        stream, seeded afresh by (eval_seed, rank) for every pass, while the training stream is set aside: how
        much or how often a run evaluates never changes the noise, hence the weights, of its training."""
        self.held_training_noise = random_state(self.device)
        torch.manual_seed(stream_seed(self.hparams.eval_seed, self.global_rank))

    def end_evaluation_noise(self) -> None:
        set_random_state(self.held_training_noise, self.device)
        self.held_training_noise = None

    def on_validation_epoch_start(self):
        self.begin_evaluation_noise()

    def on_test_epoch_start(self):
        self.begin_evaluation_noise()

    def on_validation_epoch_end(self):  # after the callbacks' epoch-end hooks, which draw from the same stream
        self.log_posterior_stats("val")
        self.end_evaluation_noise()

    def on_test_epoch_end(self):
        self.log_posterior_stats("test")
        self.end_evaluation_noise()

    def validation_step(self, batch, batch_idx):
        self.evaluation_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self.evaluation_step(batch, "test")

    def configure_optimizers(self):
        if self.optimizer is None:
            raise ConfigError("no optimizer to train with: pass model.optimizer (a partial, e.g. torch.optim.Adam)")
        return self.optimizer(params=self.parameters())
