"""Image batches the project shows: prior samples laid out one row per digit, and reconstructions."""
import torch
from torchvision.utils import make_grid

from cvae.model import CVAE, IMAGE_SHAPE, NUM_CLASSES


def digit_rows_latents(latent_dim: int, samples_per_digit: int, seed: int = 0) -> torch.Tensor:
    """Fixed z for a (10 x samples_per_digit) grid: the same z in every row, so a column is one style."""
    z = torch.randn(samples_per_digit, latent_dim, generator=torch.Generator().manual_seed(seed))
    return z.repeat(NUM_CLASSES, 1)


@torch.no_grad()
def digit_rows(model: CVAE, z: torch.Tensor) -> torch.Tensor:
    """A grid image with one row per digit 0-9, decoded from z of shape (10 * n, latent_dim)."""
    samples_per_digit = len(z) // NUM_CLASSES
    labels = torch.arange(NUM_CLASSES, device=z.device).repeat_interleave(samples_per_digit)
    return make_grid(model.sample(labels, z), nrow=samples_per_digit, pad_value=0.5)


@torch.no_grad()
def reconstruction_rows(model: CVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Originals above their reconstructions, decoded at the posterior mean."""
    mu, _ = model.encode(x, y)
    recon = model.sample(y, mu)
    return make_grid(torch.cat([x.view(-1, *IMAGE_SHAPE), recon]), nrow=len(x), pad_value=0.5)
