"""What Lightning itself costs per optimizer step, and what each thing a run adds to every step costs on top:

    python -m benchmarks.lightning_floor                 # about 1 min on a quiet 2-core CPU
    python -m benchmarks.lightning_floor --repeats 9

A near-free model (784 + 10 -> 8 -> 784, the stand-in for a GPU, where a step of this project's model takes a
fraction of a millisecond) on in-memory float batches, one epoch of 400 steps, Adam, one thread. Each repeat runs
every variant once, alternated with the plain loop: "plain" is a bare PyTorch loop; "bare Lightning" is a
LightningModule with no logger, checkpoint, summary, bar or callback; each other variant adds one thing to the
bare one. Reported: the median over repeats of (variant - plain) / steps, and its min-max. The Lightning
version, one thread and the model are fixed so that only the added thing differs (docs/speed.md).
"""

import argparse
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import TQDMProgressBar
from torch import nn
from torchmetrics import MeanMetric

STEPS, BATCH = 400, 128


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(794, 8), nn.ReLU(), nn.Linear(8, 784))


def loss_of(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits = net(torch.cat([x, nn.functional.one_hot(y, 10).float()], dim=1))
    return nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum") / len(x)


class Batches:
    def __init__(self):
        self.x, self.y = torch.rand(STEPS * BATCH, 784), torch.randint(0, 10, (STEPS * BATCH,))

    def __iter__(self):
        for start in range(0, STEPS * BATCH, BATCH):
            yield self.x[start : start + BATCH], self.y[start : start + BATCH]

    def __len__(self) -> int:
        return STEPS


def plain(batches: Batches) -> float:
    net = model()
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    started = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad()
        loss_of(net, x, y).backward()
        optimizer.step()
    return time.perf_counter() - started


class Module(pl.LightningModule):
    def __init__(self, log_step: bool, mean: bool):
        super().__init__()
        self.net, self.log_step = model(), log_step
        self.mean = MeanMetric(nan_strategy="disable") if mean else None

    def training_step(self, batch, batch_idx):
        loss = loss_of(self.net, *batch)
        if self.mean is not None:
            self.mean.update(loss.detach())
        if self.log_step:
            self.log("train/loss_step", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), 1e-3)


class EpochClock(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        self.started = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.seconds = time.perf_counter() - self.started


def lightning(batches: Batches, log_step=False, mean=False, bar=False, callbacks=0) -> float:
    clock = EpochClock()
    added = [pl.Callback() for _ in range(callbacks)] + ([TQDMProgressBar(refresh_rate=10)] if bar else [])
    trainer = pl.Trainer(
        max_epochs=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=bar,
        callbacks=[clock, *added],
    )
    trainer.fit(Module(log_step, mean), train_dataloaders=batches)
    return clock.seconds


VARIANTS = {
    "bare Lightning": {},
    "+ self.log of the step loss (prog_bar) every step": {"log_step": True},
    "+ a MeanMetric update every step": {"mean": True},
    "+ the tqdm bar, redrawn every 10 steps": {"bar": True},
    "+ 6 callbacks that do nothing": {"callbacks": 6},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")  # Lightning's tips (no workers, no logger) are no figures
    torch.set_num_threads(1)
    batches = Batches()
    extra = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name, variant in VARIANTS.items():  # plain, variant, plain, variant ...: neighbours see one machine
            floor = plain(batches)
            extra[name].append((lightning(batches, **variant) - floor) / STEPS * 1000)
    print(f"| variant | ms per step over the plain loop, median (min-max, n={args.repeats}) |\n| --- | --- |")
    for name, values in extra.items():
        print(f"| {name} | {statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f}) |")


if __name__ == "__main__":
    main()
