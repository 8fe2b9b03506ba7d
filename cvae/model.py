"""Conditional VAE for 28x28 digits: the model and its ELBO, written to be read next to the math.

q(z | x, y) = N(mu, diag sigma^2)        encoder on [x ; onehot(y)]
p(z)        = N(0, I)
p(x | z, y) = Bernoulli(sigmoid(f(z, y)))  decoder on [z ; onehot(y)]

-ELBO(x, y) = E_q[-log p(x | z, y)] + KL(q(z | x, y) || p(z))
            =        recon           +          kl            (nats per image)
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
NUM_PIXELS = math.prod(IMAGE_SHAPE)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last: it outputs parameters)."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class CVAE(nn.Module):
    def __init__(self, latent_dim: int = 2, hidden_dims: tuple[int, ...] = (512, 256)):
        super().__init__()
        self.latent_dim = latent_dim
        hidden_dims = list(hidden_dims)
        # [x ; y] -> 512 -> 256 -> (mu, log sigma^2)
        self.encoder = mlp([NUM_PIXELS + NUM_CLASSES, *hidden_dims, 2 * latent_dim])
        # [z ; y] -> 256 -> 512 -> 784 Bernoulli logits
        self.decoder = mlp([latent_dim + NUM_CLASSES, *reversed(hidden_dims), NUM_PIXELS])

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Parameters (mu, log sigma^2) of q(z | x, y); x is (B, 784) in [0, 1], y is (B,) class indices."""
        h = self.encoder(torch.cat([x, one_hot(y, x)], dim=1))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar

    def reparameterize(self, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
        """z = mu + sigma * eps, eps ~ N(0, I): a sample of q whose gradient flows into mu and sigma."""
        return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Logits of p(x | z, y), shape (B, 784)."""
        return self.decoder(torch.cat([z, one_hot(y, z)], dim=1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, y)
        logits = self.decode(self.reparameterize(mu, logvar), y)
        return logits, mu, logvar

    @torch.no_grad()
    def sample(self, labels: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        """Images of the given digits, shape (B, 1, 28, 28) in [0, 1]: the Bernoulli means at z ~ p(z)."""
        if z is None:
            z = torch.randn(len(labels), self.latent_dim, device=labels.device)
        return torch.sigmoid(self.decode(z, labels)).view(-1, *IMAGE_SHAPE)


def one_hot(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, NUM_CLASSES).to(like.dtype)


def reconstruction_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z, y) per image: Bernoulli cross-entropy summed over the 784 pixels."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)


def kl_per_dim(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) for each latent dimension, in closed form, shape (B, latent_dim)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def negative_elbo(model: CVAE, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The -ELBO terms per image (nats), with one reparameterized sample of z for the expectation."""
    logits, mu, logvar = model(x, y)
    recon = reconstruction_nll(logits, x)
    kl_dims = kl_per_dim(mu, logvar)
    kl = kl_dims.sum(dim=1)
    return {"nelbo": recon + kl, "recon": recon, "kl": kl, "kl_dims": kl_dims, "mu": mu, "logvar": logvar}


def importance_weighted_nll(model: CVAE, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """-log p(x | y) estimated with k importance samples from q (Burda et al., 2016), per image:

        log p(x | y) >= log (1/k) sum_i p(x | z_i, y) p(z_i) / q(z_i | x, y),   z_i ~ q(z | x, y)

    k = 1 is the ELBO; the bound tightens as k grows.
    """
    mu, logvar = model.encode(x, y)
    eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps  # (k, B, latent_dim)
    logits = model.decode(z.flatten(0, 1), y.repeat(k)).view(k, *x.shape)
    log_px_given_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
    log_qz = -0.5 * (eps.pow(2) + logvar + math.log(2 * math.pi)).sum(-1)
    log_weights = log_px_given_z + log_pz - log_qz
    return -(torch.logsumexp(log_weights, dim=0) - math.log(k))
