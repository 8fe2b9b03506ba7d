"""The Trainer options and extension points a Lightning user reaches for first, each checked for what it promises:
gradient clipping clips, gradient accumulation steps once per k batches, a scheduler from config changes the lr as
its formula says and LearningRateMonitor logs it, a mid-epoch resume with a scheduler is exact, and every callback
hook runs once per batch with that batch's index."""

import csv
import math
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from cvae.run.train import train
from tests.conftest import QUICK_RUN, compose_config

QUICK = [*QUICK_RUN, "trainer.limit_test_batches=2", "latent_dim=3", "logger=csv"]
BATCHES = 5  # QUICK_RUN's training batches per epoch


def run(output_dir: Path, data_dir: str, *overrides: str) -> Path:
    train(compose_config("train", [*QUICK, f"data.data_dir={data_dir}", *overrides], output_dir))
    return output_dir


def callback_of(kind: type, *overrides: str) -> list[str]:
    """Overrides that add a callback of this test module (trusted as tests.*: tests/conftest.py)."""
    return [f"+callbacks.probe._target_={kind.__module__}.{kind.__qualname__}", *overrides]


class GradientNorms(pl.Callback):
    """The global L2 norm of the gradients each optimizer step applied (they stay until the next step's zero_grad),
    and how many steps were taken."""

    norms: list[float] = []
    steps: list[int] = []

    def on_train_start(self, trainer, pl_module):
        GradientNorms.norms, GradientNorms.steps = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        GradientNorms.norms.append(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])).item())
        GradientNorms.steps.append(trainer.global_step)


def test_gradient_clip_val_clips_the_gradients_of_every_step(tmp_path, data_dir):
    run(tmp_path / "free", data_dir, *callback_of(GradientNorms))
    free = GradientNorms.norms
    assert min(free) > 1.0, "unclipped, the -ELBO's gradients are far above the clip value: the check can fail"
    run(tmp_path / "clipped", data_dir, *callback_of(GradientNorms), "trainer.gradient_clip_val=1.0")
    assert len(GradientNorms.norms) == 2 * BATCHES
    assert max(GradientNorms.norms) == pytest.approx(1.0, rel=1e-4), "each step's gradient norm clipped to 1.0"


def test_accumulate_grad_batches_steps_the_optimizer_once_per_k_batches(tmp_path, data_dir):
    run(tmp_path, data_dir, *callback_of(GradientNorms), "trainer.accumulate_grad_batches=2", "trainer.max_epochs=1")
    # optimizer steps done after each batch: batches 1, 3 complete a pair, and Lightning steps on the epoch's last
    assert GradientNorms.steps == [0, 1, 1, 2, 3]


def test_a_scheduler_from_config_sets_the_lr_and_learning_rate_monitor_logs_it(tmp_path, data_dir):
    epochs, lr = 4, 1e-3
    run(
        tmp_path,
        data_dir,
        "scheduler=cosine",
        "callbacks=[default,lr_monitor]",
        f"trainer.max_epochs={epochs}",
        f"lr={lr}",
    )
    with open(tmp_path / "metrics.csv") as file:
        logged = [float(row["lr-Adam"]) for row in csv.DictReader(file) if row.get("lr-Adam")]
    # CosineAnnealingLR with T_max = max_epochs, stepped once an epoch: lr (1 + cos(pi e / T)) / 2 in epoch e
    expected = [lr * (1 + math.cos(math.pi * epoch / epochs)) / 2 for epoch in range(epochs)]
    assert logged == pytest.approx(expected, rel=1e-6)


def test_a_mid_epoch_resume_with_a_step_scheduler_ends_as_the_uninterrupted_run(tmp_path, data_dir):
    """The scheduler's state (its step count, its lr) goes into the checkpoint and comes back: a run with an lr that
    changes every step, stopped by SIGTERM in the middle of epoch 1 and resumed, ends byte for byte as a run never
    stopped."""
    schedule = ["scheduler=cosine", "model.scheduler.interval=step", f"model.scheduler.scheduler.T_max={2 * BATCHES}"]
    uninterrupted = run(tmp_path / "uninterrupted", data_dir, *schedule)
    stop = ["+callbacks.stop._target_=tests.test_failures.SignalSelfAt", "+callbacks.stop.signal_number=15"]
    with pytest.raises(SIGTERMException):
        run(tmp_path / "resumed", data_dir, *schedule, *stop)
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, weights_only=True)
    assert saved["global_step"] == BATCHES + 3 and saved["lr_schedulers"][0]["last_epoch"] == BATCHES + 3
    run(tmp_path / "resumed", data_dir, *schedule, f"ckpt_path={last}")
    assert (tmp_path / "resumed" / "metrics.json").read_bytes() == (uninterrupted / "metrics.json").read_bytes()


class BatchHooks(pl.Callback):
    """Every training batch hook call, as (epoch, hook, batch_idx, batch size)."""

    calls: list[tuple] = []

    def on_train_start(self, trainer, pl_module):
        BatchHooks.calls = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        BatchHooks.calls.append((trainer.current_epoch, "start", batch_idx, len(batch[0])))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        BatchHooks.calls.append((trainer.current_epoch, "end", batch_idx, len(batch[0])))


def test_every_callback_hook_runs_once_per_batch_with_its_index(tmp_path, data_dir):
    run(tmp_path, data_dir, *callback_of(BatchHooks))
    expected = [(epoch, hook, batch, 128) for epoch in (0, 1) for batch in range(BATCHES) for hook in ("start", "end")]
    assert BatchHooks.calls == expected
