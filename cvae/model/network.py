"""What every network of the project shares: the interface the ELBO needs (Net, docs/contributing.md) and the
optional learned prior. `blends_labels`: decode also takes y as (B, 10) float label weights (blends of one-hot
vectors), which the across-digit interpolation needs."""

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cvae.errors import ConfigError
from cvae.validate import check_flag, positive_int

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
NUM_PIXELS = 28 * 28


def one_hot(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """onehot(y) of class indices (B,); label weights (B, 10), e.g. a blend of two digits, pass as they are."""
    return y.to(like.dtype) if y.is_floating_point() else F.one_hot(y, NUM_CLASSES).to(like.dtype)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last: it outputs parameters)."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def widths(values, key: str, count: int | None = None) -> list[int]:
    """A list of layer widths as plain ints (a checkpoint then loads with weights_only), or one line saying why
    not: said here, beside the network, so that a new network needs no entry in a central rule list."""
    values = list(values) if isinstance(values, Sequence) and not isinstance(values, str) else values
    if not isinstance(values, list) or not values or not all(positive_int(width) for width in values):
        raise ConfigError(f"{key}={values!r} is not allowed: it must be a non-empty list of positive integers")
    if count is not None and len(values) != count:
        raise ConfigError(f"{key}={values} must name {count} widths, e.g. {key}=[32,64]")
    return [int(width) for width in values]


class Network(nn.Module):
    """A subclass sets self.encoder, which reads [x ; onehot(y)], and self.decoder, which reads [z ; onehot(y)].
    With learned_prior, p(z | y) = N(mu_y, diag sigma_y^2), one learned Gaussian per digit, instead of N(0, I)."""

    blends_labels = True

    def __init__(self, latent_dim: int, learned_prior: bool = False):
        super().__init__()
        if not positive_int(latent_dim):
            raise ConfigError(f"latent_dim={latent_dim!r} is not allowed: it must be a positive integer")
        self.latent_dim, self.learned_prior = int(latent_dim), check_flag(learned_prior, "model.net.learned_prior")
        if learned_prior:  # zeros start it at the reference N(0, I)
            self.prior_mu = nn.Parameter(torch.zeros(NUM_CLASSES, latent_dim))
            self.prior_logvar = nn.Parameter(torch.zeros(NUM_CLASSES, latent_dim))

    def prior(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """(mu_y, log sigma_y^2) of p(z | y), or (None, None) for the reference N(0, I)."""
        return (self.prior_mu[y], self.prior_logvar[y]) if self.learned_prior else (None, None)

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2) of q(z | x, y)."""
        return self.encoder(torch.cat([x, one_hot(y, x)], dim=1)).chunk(2, dim=1)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits of p(x | z, y), shape (B, 784)."""
        return self.decoder(torch.cat([z, one_hot(y, z)], dim=1))
