"""(a), the floor of the speed benchmark: the reference model trained by a plain PyTorch loop over in-memory
float tensors, as a hand-written script would (no Lightning, no Hydra: it imports only torch, torchvision and the
model), on exactly what train.py trains: the same split, initial weights, batches, optimizer and noise stream."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext

import torch

from cvae.data.batches import train_val_indices
from cvae.model.cvae import negative_elbo, pixels
from cvae.model.mlp import MLP
from cvae.seeding import random_state, set_random_state, stream_seed

VAL_SIZE, SPLIT_SEED = 5_000, 12_345  # MNISTDataModule's defaults (conf/data/mnist.yaml)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def autocast(device: torch.device, precision: str):
    """The autocast a Lightning `precision` setting stands for, for the plain loop."""
    if precision.startswith("bf16") and "mixed" in precision:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16") and "mixed" in precision:
        return torch.autocast(device.type, dtype=torch.float16)
    return nullcontext()


def clocks(device: torch.device) -> tuple[float, float]:
    """(wall, process CPU) seconds, after the device has finished its queued work."""
    synchronize(device)
    return time.perf_counter(), time.process_time()


def batches_per_epoch(size: int, batch_size: int, limit: int | None) -> int:
    batches = math.ceil(size / batch_size)
    return min(batches, limit) if limit else batches


def load_mnist(data_dir: str) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """uint8 images and labels of the train, val and test splits, read as a hand-written script would read them
    (torchvision's parser, no Lightning, no Hydra); the split is MNISTDataModule's (tests/test_benchmark.py)."""
    from torchvision.datasets import MNIST

    train, test = (MNIST(data_dir, train=flag, download=False) for flag in (True, False))
    train_idx, val_idx = train_val_indices(VAL_SIZE, SPLIT_SEED)
    return {
        "train": (train.data[train_idx], train.targets[train_idx]),
        "val": (train.data[val_idx], train.targets[val_idx]),
        "test": (test.data, test.targets),
    }


class PlainLoop:
    """(a): the reference architecture trained by hand on float [0, 1] (N, 784) tensors already on the device.

    It keeps its own random state, so alternating its epochs with a Lightning run changes neither of them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, args, device: torch.device):
        self.args, self.device = args, device
        torch.manual_seed(args.seed)  # as train.py: seed, then build the model
        self.model = MLP(args.latent_dim, args.hidden_dims).to(device)
        if args.compile:
            self.model.compile()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=args.lr)
        torch.manual_seed(stream_seed(args.seed, 0))  # the training noise of rank 0, as RankState seeds it
        self.rng_state = random_state(device)
        self.x = pixels(images.to(device))
        self.y = labels.to(device)
        self.epochs_done, self.nelbo = 0, None

    def epoch(self) -> tuple[float, float]:
        """One training epoch: (wall, CPU) seconds. Its batches are the datamodule's: a permutation seeded by
        seed + epoch, sliced in order."""
        outer_state = random_state(self.device)
        set_random_state(self.rng_state, self.device)
        num_batches = batches_per_epoch(len(self.y), self.args.batch_size, self.args.limit)
        started = clocks(self.device)
        generator = torch.Generator().manual_seed(self.args.seed + self.epochs_done)
        order = torch.randperm(len(self.y), generator=generator).to(self.device)
        total = torch.zeros((), device=self.device)
        for batch in order.split(self.args.batch_size)[:num_batches]:
            with autocast(self.device, self.args.precision):
                loss = negative_elbo(self.model, self.x[batch], self.y[batch])["nelbo"].mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
        ended = clocks(self.device)
        self.nelbo = total.item() / num_batches
        self.epochs_done += 1
        self.rng_state = random_state(self.device)
        set_random_state(outer_state, self.device)
        return ended[0] - started[0], ended[1] - started[1]

    @torch.no_grad()
    def evaluation_pass(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """Mean -ELBO over a split (as much of it as --limit allows), batch --eval-batch-size."""
        self.model.eval()
        size = self.args.eval_batch_size
        num_batches = batches_per_epoch(len(labels), size, self.args.limit)
        total, count = torch.zeros((), device=self.device), 0
        for x, y in list(zip(images.to(self.device).split(size), labels.to(self.device).split(size)))[:num_batches]:
            with autocast(self.device, self.args.precision):
                total += negative_elbo(self.model, pixels(x), y)["nelbo"].sum()
            count += len(y)
        self.model.train()
        return total.item() / count


def plain_script(args) -> dict:
    """The plain reference of the end-to-end comparison, run as its own process: `python -m benchmarks.speed
    --plain-script EPOCHS` reads MNIST, trains EPOCHS epochs with a test pass after each, prints a JSON line."""
    started = time.perf_counter()
    device = resolve_device(args.device)
    splits = load_mnist(args.data_dir)
    loop = PlainLoop(*splits["train"], args, device)
    train_s = test_s = 0.0
    for _ in range(args.plain_script):
        train_s += loop.epoch()[0]
        test_started = time.perf_counter()
        test_nelbo = loop.evaluation_pass(*splits["test"])
        test_s += time.perf_counter() - test_started
    return {
        "train_s": train_s,
        "test_s": test_s,
        "in_script_s": time.perf_counter() - started,
        "train_nelbo": loop.nelbo,
        "test_nelbo": test_nelbo,
    }
