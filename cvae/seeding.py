"""Random streams, each with its own seed, so that what one part of a run draws never shifts what another draws:
training noise is seeded by (seed, rank), evaluation noise by (eval_seed, rank), generation by the user's seed."""

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch


def stream_seed(*keys: int) -> int:
    """A seed for one random stream, e.g. (seed, rank): distinct keys give independent streams."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1)[0])


def random_state(device: torch.device) -> dict:
    """torch's global random state on the CPU and on this rank's own GPU (if it trains on one)."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda}


def set_random_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if state["cuda"] is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


@contextmanager
def seeded_global_rng(seed: int, device: torch.device) -> Iterator[None]:
    """The model draws its own noise from torch's global generator (reparameterize, importance samples):
    seed that for a repeatable result, then give the caller its generator state back untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
