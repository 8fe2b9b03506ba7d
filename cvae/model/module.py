"""The LightningModule: trains a network (injected as `net`) on the ELBO of cvae.py and logs exact per-split means.
Automatic optimization, so every Trainer option works as Lightning documents it."""

from functools import partial

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric

from cvae.errors import ConfigError
from cvae.model.cvae import negative_elbo, prior
from cvae.model.posterior import PosteriorStats
from cvae.seeding import random_state, set_random_state, stream_seed
from cvae.validate import check_count, check_finite, check_flag, check_seed

ELBO_TERMS = ("nelbo", "recon", "kl")
EVAL_STAGES = ("val", "test")


class CVAELitModule(pl.LightningModule):
    def __init__(
        self,
        net: nn.Module,
        optimizer: partial | None = None,
        scheduler: dict | None = None,
        beta: float = 1.0,
        kl_warmup_epochs: int = 0,
        free_bits: float = 0.0,
        compile: bool = False,
        eval_seed: int = 0,
    ):
        """optimizer: a partial taking the parameters; scheduler: Lightning's lr_scheduler dict whose `scheduler` is a
        partial taking the optimizer. Neither is a hyperparameter: they do not change what the weights mean."""
        super().__init__()
        # its own arguments, checked here whoever builds it: a config, a checkpoint, a script
        check_finite(beta, "model.beta")
        check_finite(free_bits, "model.free_bits")
        check_count(kl_warmup_epochs, "model.kl_warmup_epochs", minimum=0)
        check_flag(compile, "model.compile")
        check_seed(eval_seed, "model.eval_seed")
        if optimizer is not None:  # built once now, so that its own check of its settings (lr=nan) comes first
            try:
                optimizer(params=list(net.parameters()))
            except (ValueError, TypeError) as error:
                raise ConfigError(f"model.optimizer is not allowed: {error}") from None
        # Not sent to the loggers: cvae.hparams gives them the whole run's knobs, each once.
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"], logger=False)
        self.net = net
        self.optimizer, self.scheduler = optimizer, scheduler
        # nan_strategy="disable": no NaN check, which is a host-device sync per step on a GPU (a NaN loss stops
        # the run anyway); a NaN would show in the mean instead of being dropped
        self.train_nelbo = MeanMetric(nan_strategy="disable")
        # Means over every image of the split (MeanMetric of per-image values), synced across DDP ranks.
        self.eval_means = nn.ModuleDict(
            {stage: nn.ModuleDict({term: MeanMetric() for term in ELBO_TERMS}) for stage in EVAL_STAGES}
        )
        self.posterior_stats = nn.ModuleDict({stage: PosteriorStats(net.latent_dim) for stage in EVAL_STAGES})
        self.held_training_noise: dict | None = None  # the training stream, set aside during an evaluation pass
        self.elbo_terms = negative_elbo

    def on_fit_start(self) -> None:
        if self.hparams.compile:  # the ELBO compiled with the network's calls in it; parameter names unchanged
            self.elbo_terms = torch.compile(negative_elbo)

    def kl_weight(self) -> float:
        """beta at the next optimizer step, ramped up linearly, step by step, over the first kl_warmup_epochs."""
        warmup = self.hparams.kl_warmup_epochs
        if warmup <= 0:
            return self.hparams.beta
        # optimizer steps over steps per epoch (several batches per step with gradient accumulation)
        trainer = self.trainer
        epochs_done = self.global_step * trainer.accumulate_grad_batches / max(1, trainer.num_training_batches)
        return self.hparams.beta * min(1.0, epochs_done / warmup)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        terms = self.elbo_terms(self.net, x, y)
        # Free bits: KL below the floor (per dimension, batch mean) is not penalised, so units stay active.
        kl = terms["kl_dims"].mean(dim=0).clamp(min=self.hparams.free_bits).sum()
        loss = terms["recon"].mean() + self.kl_weight() * kl
        nelbo = terms["nelbo"].detach()
        self.train_nelbo.update(nelbo)
        if self.step_loss_shown(batch_idx):
            self.log("train/nelbo_step", nelbo.mean(), prog_bar=True)
        return loss

    def step_loss_shown(self, batch_idx: int) -> bool:
        """Whether this step's loss reaches anyone: at the steps a logger writes (every log_every_n_steps optimizer
        steps, as Lightning counts them) and the progress bar redraws. self.log on every step cost about as much as
        the rest of Lightning's loop (docs/speed.md); the curves the loggers get are the same."""
        trainer, batch = self.trainer, batch_idx + 1
        bar = trainer.progress_bar_callback
        redraw = bar is not None and bar.is_enabled
        redraw = redraw and (batch % max(1, bar.refresh_rate) == 0 or batch == trainer.num_training_batches)
        written = trainer.log_every_n_steps > 0 and (self.global_step + 1) % trainer.log_every_n_steps == 0
        return redraw or written or trainer.should_stop

    def on_train_epoch_end(self) -> None:
        # Once per epoch: the exact mean over every image of the epoch (and of every rank)
        self.log("train/nelbo", self.train_nelbo)
        if self.hparams.kl_warmup_epochs > 0:  # without a warm-up beta is a constant: a knob (model/beta), no curve
            self.log("train/beta", self.kl_weight())

    def evaluation_step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> None:
        x, y = batch
        terms = negative_elbo(self.net, x, y)
        for term, mean in self.eval_means[stage].items():
            mean.update(terms[term])
            self.log(f"{stage}/{term}", mean, on_step=False, on_epoch=True, prog_bar=term == "nelbo")
        self.posterior_stats[stage].update(terms["mu"], terms["logvar"], *prior(self.net, y))

    def begin_evaluation(self) -> None:
        """Evaluation noise (z of validation and test, and of the callbacks at their epoch end) comes from its own
        stream, seeded afresh by (eval_seed, rank) for every pass, while the training stream is set aside: how
        much or how often a run evaluates never changes the noise, hence the weights, of its training."""
        self.held_training_noise = random_state(self.device)
        torch.manual_seed(stream_seed(self.hparams.eval_seed, self.global_rank))

    on_validation_epoch_start = on_test_epoch_start = begin_evaluation

    def end_evaluation(self, stage: str) -> None:
        """Posterior-collapse diagnostics (latent units in use, the KL each carries), then the training stream back.
        Called after the callbacks' epoch-end hooks, which draw from the evaluation stream."""
        stats = self.posterior_stats[stage].compute()  # already summed over DDP ranks: the same on every rank
        self.log(f"{stage}/active_units", stats["active_units"].item())
        self.log_dict({f"{stage}/kl_dim/{dim}": kl.item() for dim, kl in enumerate(stats["kl_per_dim"])})
        self.posterior_stats[stage].reset()
        set_random_state(self.held_training_noise, self.device)
        self.held_training_noise = None

    def on_validation_epoch_end(self):
        self.end_evaluation("val")

    def on_test_epoch_end(self):
        self.end_evaluation("test")

    def validation_step(self, batch, batch_idx):
        self.evaluation_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self.evaluation_step(batch, "test")

    def configure_optimizers(self):
        if self.optimizer is None:
            raise ConfigError("no optimizer to train with: pass model.optimizer (a partial, e.g. torch.optim.Adam)")
        optimizer = self.optimizer(params=self.parameters())
        if self.scheduler is None:
            return optimizer
        # Lightning's lr_scheduler dict: interval, frequency, monitor as configured (conf/scheduler/)
        scheduler = {**self.scheduler, "scheduler": self.scheduler["scheduler"](optimizer=optimizer)}
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
