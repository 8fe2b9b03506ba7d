"""z from the model's own prior p(z | y), and images decoded from any z: what every sample of the project goes
through, whichever sampler drew its z."""

from typing import Protocol

import torch
from tqdm.auto import tqdm

from cvae.model.cvae import Net, model_device, prior_sample, sample
from cvae.model.network import NUM_CLASSES
from cvae.validate import check_finite


class Sampler(Protocol):
    """Where z comes from (conf/sampler/): PriorSampler or GaussianMixtureSampler."""

    name: str
    temperature: float

    def fit(self, model: Net, images: torch.Tensor, labels: torch.Tensor) -> "Sampler": ...

    def fit_for_checkpoint(self, model: Net, images, labels, ckpt_path) -> "Sampler": ...

    def latents(self, model: Net, labels: torch.Tensor, seed: int) -> torch.Tensor: ...

    def grid_latents(self, model: Net, samples_per_digit: int, seed: int = 0) -> torch.Tensor: ...


def check_temperature(value) -> float:
    """sampler.temperature: the factor on every sampler's noise; 1 draws from the distribution itself."""
    return check_finite(value, "sampler.temperature", minimum=0.0, above=True)


def prior_latents(count: int, latent_dim: int, seed: int) -> torch.Tensor:
    """count draws of N(0, I), on the CPU, from a generator of their own: the same noise for a seed whatever
    the batch size or device used to decode them."""
    return torch.randn(count, latent_dim, generator=torch.Generator().manual_seed(seed))


def grid_labels(samples_per_digit: int) -> torch.Tensor:
    """Labels of a grid with one row per digit 0-9."""
    return torch.arange(NUM_CLASSES).repeat_interleave(samples_per_digit)


class PriorSampler:
    """z ~ p(z | y), the model's own prior; with temperature t < 1, z = mu_y + t * sigma_y * eps, the noise shrunk
    toward each digit's mean (NVAE's and Glow's sampling temperature): likelier digits, less variety."""

    name = "prior"

    def __init__(self, temperature: float = 1.0):
        self.temperature = check_temperature(temperature)

    def fit(self, model: Net, images: torch.Tensor, labels: torch.Tensor) -> "PriorSampler":
        return self  # nothing to fit

    def fit_for_checkpoint(self, model: Net, images, labels, ckpt_path) -> "PriorSampler":
        return self

    def latents(self, model: Net, labels: torch.Tensor, seed: int) -> torch.Tensor:
        """One z per label, on the CPU."""
        return from_prior(model, labels, self.temperature * prior_latents(len(labels), model.latent_dim, seed))

    def grid_latents(self, model: Net, samples_per_digit: int, seed: int = 0) -> torch.Tensor:
        """z for a grid with a row per digit: the same noise in every row, so a column is one style."""
        eps = prior_latents(samples_per_digit, model.latent_dim, seed).repeat(NUM_CLASSES, 1)
        return from_prior(model, grid_labels(samples_per_digit), self.temperature * eps)


@torch.no_grad()
def from_prior(model: Net, labels: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z ~ p(z | y) from standard normal noise, on the CPU; the noise itself under the reference N(0, I)."""
    device = model_device(model)
    return prior_sample(model, labels.to(device), eps.to(device)).cpu()


@torch.no_grad()
def decode(
    model: Net, labels: torch.Tensor, z: torch.Tensor, batch_size: int = 1000, progress: str | None = None
) -> torch.Tensor:
    """Images (N, 1, 28, 28) in [0, 1] of the labels at z, decoded on the model's device batch by batch."""
    device = model_device(model)
    batches = list(zip(labels.split(batch_size), z.split(batch_size)))
    batches = tqdm(batches, desc=progress, disable=progress is None, unit="batch")
    return torch.cat([sample(model, y.to(device), z_batch.to(device)) for y, z_batch in batches])


def generate(
    model: Net,
    labels: torch.Tensor,
    seed: int = 0,
    sampler: Sampler | None = None,
    batch_size: int = 1000,
    progress: str | None = None,
) -> torch.Tensor:
    """One image per label, each from its own z drawn by the sampler (default: the prior p(z | y))."""
    z = (sampler or PriorSampler()).latents(model, labels, seed)
    return decode(model, labels, z, batch_size, progress)
