"""The LightningModule: a thin shell that trains the CVAE on its ELBO and logs exact per-split means.

Training makes several optimizer steps per Lightning call (`steps_per_call`, as Keras' steps_per_execution):
Lightning's per-call bookkeeping (hooks, the data fetcher, the result collection, the progress bar) costs a
few ms on a CPU, a fixed cost that would dominate a GPU step of this small model; paid once per
steps_per_call steps, it nearly vanishes. Each step is what one call of its own would do: the same batch, loss,
optimizer step, random draws and metric updates, in the same order, so the weights and every metric are
bit for bit those of steps_per_call=1.
"""

import signal
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial

import pytorch_lightning as pl
import torch
from torch import nn
from torchmetrics import MeanMetric

from cvae.errors import ConfigError
from cvae.model.cvae import CVAE, negative_elbo
from cvae.model.posterior import PosteriorStats
from cvae.seeding import random_state, set_random_state, stream_seed
from cvae.validate import check_count

ELBO_TERMS = ("nelbo", "recon", "kl")
EVAL_STAGES = ("val", "test")
# Lightning warns on every fit that a training_step taking the batch iterator is "experimental": this module
# relies on it knowingly, and tests/test_steps_per_call.py checks what it depends on
warnings.filterwarnings("ignore", message="Found `dataloader_iter` argument in the `training_step`")
warnings.filterwarnings("ignore", message="You are using the `dataloader_iter` step flavor")


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
        steps_per_call: int = 8,
        **model_options,
    ):
        """model_options: CVAE's architecture, channels and learned_prior (see cvae/model/cvae.py).
        steps_per_call: optimizer steps per Lightning call; changes the time only, so it is no hyperparameter
        of the checkpoint (a run resumes with any value)."""
        super().__init__()
        hidden_dims = [int(h) for h in hidden_dims]  # plain ints, so a checkpoint loads with weights_only
        if "channels" in model_options:
            model_options["channels"] = [int(c) for c in model_options["channels"]]
        # The optimizer is a factory, not a hyperparameter: the checkpoint keeps only what rebuilds the model.
        # Not sent to the loggers: cvae.hparams gives them the whole run's knobs, each once.
        self.save_hyperparameters(ignore=["optimizer", "steps_per_call"], logger=False)
        self.model = CVAE(latent_dim, hidden_dims, **model_options)
        self.optimizer = optimizer
        check_count(steps_per_call, "model.steps_per_call")
        self.steps_per_call = steps_per_call
        self.automatic_optimization = False  # training_step makes its optimizer steps itself, several per call
        self.interrupted_in_call = False  # Ctrl-C during a call's steps, raised once the call is done
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

    def kl_weight(self, step: int | None = None) -> float:
        """beta at an optimizer step (default: the next one), ramped up linearly, step by step, over the first
        kl_warmup_epochs."""
        warmup = self.hparams.kl_warmup_epochs
        if warmup <= 0:
            return self.hparams.beta
        epochs_done = (self.global_step if step is None else step) / max(1, self.trainer.num_training_batches)
        return self.hparams.beta * min(1.0, epochs_done / warmup)

    def training_step(self, dataloader_iter: Iterator) -> dict[str, torch.Tensor]:
        """Up to steps_per_call optimizer steps, one per batch, on the next batches of the epoch (Lightning hands
        a training_step with this argument the epoch's iterator, and its limits, instead of one batch).

        Written so that a GPU can capture the loop in a CUDA graph: nothing in it reads a value back to the host
        (beta of each step is computed before, the losses and the step logs are read after)."""
        group = self.next_batches(dataloader_iter)
        first_step = self.global_step
        # betas as Python floats rounded once to float32: the same number each step multiplied by before
        betas = torch.tensor([self.kl_weight(first_step + i) for i in range(len(group))], device=self.device)
        optimizer = self.optimizers()
        with self.interrupts_deferred():
            losses, nelbos = zip(*(self.train_on(x, y, beta, optimizer) for (x, y), beta in zip(group, betas)))
        count_batches_in_lightning(self.trainer, len(group))
        self.show_step_nelbos(first_step, nelbos)
        return {"loss": torch.stack(losses)}  # for StopOnDivergence, which checks each step's loss

    @contextmanager
    def interrupts_deferred(self):
        """Ctrl-C (SIGINT) in the middle of a call's steps takes effect after the call, as Lightning does with SIGTERM:
        the run stops, and CheckpointOnInterrupt saves it, at a batch boundary, from which a resume is exact."""
        if threading.current_thread() is not threading.main_thread() or (
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler  # e.g. ignored in a background job
        ):
            yield
            return

        def record(signum, frame):
            self.interrupted_in_call = True

        previous = signal.signal(signal.SIGINT, record)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        # after the callbacks' hooks of the call: where a Ctrl-C between two calls would have stopped the run
        if self.interrupted_in_call:
            self.interrupted_in_call = False
            raise KeyboardInterrupt

    def next_batches(self, batches: Iterator) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of this call, on the device as Lightning would have handed them to a training_step each:
        steps_per_call, fewer at the end of the epoch and where Lightning must act between two steps (max_steps,
        a validation in the middle of an epoch)."""
        trainer, group = self.trainer, []
        size = self.steps_per_call
        if trainer.max_steps >= 0:
            size = min(size, trainer.max_steps - self.global_step)
        every, done = trainer.val_check_batch, trainer.fit_loop.epoch_loop.batch_progress.current.ready - 1
        if isinstance(every, int) and every < trainer.num_training_batches and trainer.check_val_every_n_epoch:
            size = min(size, every - done % every)
        while len(group) < size and not batches.done:
            try:
                batch, _, _ = next(batches)
            except StopIteration:  # an iterable of unknown length ended
                break
            x, y = trainer.precision_plugin.convert_input(batch)
            if x.device != self.device:  # the dataloader path; memory batches are on the device already
                x, y = trainer.strategy.batch_to_device((x, y))
            group.append((x, y))
        return group

    def train_on(self, x: torch.Tensor, y: torch.Tensor, beta: torch.Tensor, optimizer) -> tuple[torch.Tensor, ...]:
        """One optimizer step on one batch. Returns its loss and the per-image -ELBO (both detached)."""
        terms = negative_elbo(self.model, x, y)
        # Free bits: KL below the floor (per dimension, batch mean) is not penalised, so units stay active.
        kl = terms["kl_dims"].mean(dim=0).clamp(min=self.hparams.free_bits).sum()
        loss = terms["recon"].mean() + beta * kl
        optimizer.zero_grad()
        self.manual_backward(loss)
        optimizer.step()  # through Lightning: counts global_step, runs the precision plugin and DDP's sync
        nelbo = terms["nelbo"].detach()
        self.train_nelbo.update(nelbo)
        return loss.detach(), nelbo

    def show_step_nelbos(self, first_step: int, nelbos: tuple[torch.Tensor, ...]) -> None:
        """train/nelbo_step where someone sees it, as one call per step would have shown it: to the loggers at
        every log_every_n_steps-th step (and the last, when the run stops), to the progress bar at the calls it
        redraws after. Only those steps' means are computed: each is a host-device sync on a GPU."""
        trainer = self.trainer
        every, last = trainer.log_every_n_steps, first_step + len(nelbos) - 1
        for step, nelbo in enumerate(nelbos, first_step):
            if (every > 0 and (step + 1) % every == 0) or (step == last and trainer.should_stop):
                self.log_to_loggers({"train/nelbo_step": nelbo.mean().item()}, step)
        if self.bar_redraws():
            self.log("train/nelbo_step", nelbos[-1].mean(), prog_bar=True, logger=False, batch_size=1)

    def log_to_loggers(self, metrics: dict[str, float], step: int) -> None:
        """What Lightning writes for a value self.log'ged on a step: the value and the epoch, at that step."""
        for logger in self.loggers:
            logger.log_metrics({**metrics, "epoch": self.current_epoch}, step=step)
            logger.save()

    def bar_redraws(self) -> bool:
        """Whether the progress bar redraws after this call: every refresh_rate batches and at the epoch's end."""
        trainer = self.trainer
        bar = trainer.progress_bar_callback
        if bar is None or not bar.is_enabled:
            return False
        refresh_rate = max(1, getattr(bar, "refresh_rate", 1))
        batches = trainer.fit_loop.epoch_loop.batch_idx + 1
        return batches % refresh_rate == 0 or batches == trainer.num_training_batches

    def on_train_epoch_end(self) -> None:
        # Once per epoch, not per step: every self.log call costs Lightning bookkeeping on the hot path.
        # batch_size: Lightning asks for one when training_step takes the iterator; each value here is one number
        self.log("train/nelbo", self.train_nelbo, batch_size=1)
        self.log("train/beta", self.kl_weight(), batch_size=1)

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


def count_batches_in_lightning(trainer: pl.Trainer, batches: int) -> None:
    """Lightning counts one batch per training_step call; this call trained on `batches`. Its counters move on
    by the others, so that all it derives from them is what one call per batch gives: the progress bar's count,
    the step the loggers write at, the end of the epoch and limit_train_batches after a mid-epoch resume, the loop
    state in checkpoints. (global_step needs nothing: with manual optimization it counts optimizer steps.)
    Private attributes of pytorch_lightning 2.x; tests/test_steps_per_call.py fails if they change."""
    loop = trainer.fit_loop.epoch_loop
    loop.batch_progress.increment_by(batches - 1, is_last_batch=loop.batch_progress.is_last_batch)
    loop._batches_that_stepped += batches - 1
    trainer.fit_loop._data_fetcher._batch_idx = loop.batch_idx  # the batch_idx of on_train_batch_end hooks
