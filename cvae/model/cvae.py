"""Conditional VAE for 28x28 digits: the ELBO, the IW bound and samples, over any network of the Net interface.

q(z | x, y) = N(mu, diag sigma^2)        net.encode(x, y)
p(z | y)    = N(0, I)                     the reference prior, or net.prior(y) when the network learns one
p(x | z, y) = Bernoulli(sigmoid(f(z, y)))  f = net.decode(z, y)

-ELBO(x, y) = E_q[-log p(x | z, y)] + KL(q(z | x, y) || p(z | y))
            =        recon           +          kl            (nats per image)
"""

import math
from typing import Protocol

import torch
import torch.nn.functional as F

from cvae.model.network import IMAGE_SHAPE, NUM_PIXELS


class Net(Protocol):
    """What the ELBO, the samplers and every generation tool use of a network (docs/contributing.md)."""

    latent_dim: int

    def encode(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def decode(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor: ...


def prior(net: Net, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
    """(mu_y, log sigma_y^2) of p(z | y), or (None, None) for N(0, I), which a network without prior() has."""
    return net.prior(y) if hasattr(net, "prior") else (None, None)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I): a sample of q whose gradient flows into mu and sigma."""
    return mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)


def prior_sample(net: Net, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z ~ p(z | y) from standard normal noise eps: z = mu_y + sigma_y * eps (z = eps for N(0, I))."""
    mu, logvar = prior(net, y)
    return eps if mu is None else mu + torch.exp(0.5 * logvar) * eps


@torch.no_grad()
def sample(net: Net, labels: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
    """Images of the given digits, shape (B, 1, 28, 28) in [0, 1]: the Bernoulli means at z ~ p(z | y)."""
    if z is None:
        z = prior_sample(net, labels, torch.randn(len(labels), net.latent_dim, device=labels.device))
    return torch.sigmoid(net.decode(z, labels)).view(-1, *IMAGE_SHAPE)


def pixels(images: torch.Tensor) -> torch.Tensor:
    """Model input x, (N, 784) floats in [0, 1], of uint8 images as MNIST stores them or of floats in [0, 1]."""
    x = images.reshape(len(images), NUM_PIXELS)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def model_device(net: Net) -> torch.device:
    return next(net.parameters()).device


@torch.no_grad()
def posterior_means(net: Net, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """E_q[z | x, y] of each image (uint8 or [0, 1] pixels), batch by batch: (N, latent_dim) on the CPU."""
    device = model_device(net)
    batches = zip(images.split(batch_size), labels.split(batch_size))
    return torch.cat([net.encode(pixels(x.to(device)), y.to(device))[0].cpu() for x, y in batches])


@torch.no_grad()
def reconstruct(net: Net, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Images (uint8 or [0, 1] pixels) decoded at their posterior means, (N, 1, 28, 28) in [0, 1] on the net's device:
    the deterministic reconstruction, as figures show it and as Ghosh et al.'s REC column scores it."""
    device = model_device(net)
    batches = zip(images.split(batch_size), labels.split(batch_size))
    return torch.cat([sample(net, y.to(device), net.encode(pixels(x.to(device)), y.to(device))[0]) for x, y in batches])


def reconstruction_nll(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """-log p(x | z, y) per image: Bernoulli cross-entropy summed over the 784 pixels."""
    return F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(dim=1)


def kl_per_dim(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    prior_mu: torch.Tensor | None = None,
    prior_logvar: torch.Tensor | None = None,
) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(mu_p, sigma_p^2)) for each latent dimension, in closed form, shape (B, latent_dim):
        1/2 [log sigma_p^2 - log sigma^2 + (sigma^2 + (mu - mu_p)^2) / sigma_p^2 - 1]
    With no prior given, N(0, 1): 1/2 [mu^2 + sigma^2 - 1 - log sigma^2] (the reference design's arithmetic)."""
    if prior_mu is None:
        return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)
    return 0.5 * (prior_logvar - logvar + (logvar.exp() + (mu - prior_mu).pow(2)) / prior_logvar.exp() - 1.0)


def negative_elbo(net: Net, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The -ELBO terms per image (nats), with one reparameterized sample of z for the expectation."""
    mu, logvar = net.encode(x, y)
    logits = net.decode(reparameterize(mu, logvar), y)
    recon = reconstruction_nll(logits, x)
    kl_dims = kl_per_dim(mu, logvar, *prior(net, y))
    kl = kl_dims.sum(dim=1)
    return {"nelbo": recon + kl, "recon": recon, "kl": kl, "kl_dims": kl_dims, "mu": mu, "logvar": logvar}


def importance_weighted_nll(net: Net, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """-log p(x | y) estimated with k importance samples from q (Burda et al., 2016), per image (k = 1: the ELBO):
    log p(x | y) >= log (1/k) sum_i p(x | z_i, y) p(z_i | y) / q(z_i | x, y),   z_i ~ q(z | x, y)"""
    mu, logvar = net.encode(x, y)
    eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps  # (k, B, latent_dim)
    logits = net.decode(z.flatten(0, 1), y.repeat(k)).view(k, *x.shape)
    log_px_given_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    prior_mu, prior_logvar = prior(net, y)
    if prior_mu is None:
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
    else:
        log_pz = -0.5 * ((z - prior_mu).pow(2) / prior_logvar.exp() + prior_logvar + math.log(2 * math.pi)).sum(-1)
    log_qz = -0.5 * (eps.pow(2) + logvar + math.log(2 * math.pi)).sum(-1)
    log_weights = log_px_given_z + log_pz - log_qz
    return -(torch.logsumexp(log_weights, dim=0) - math.log(k))
