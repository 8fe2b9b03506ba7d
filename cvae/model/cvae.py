"""Conditional VAE for 28x28 digits: the model and its ELBO, written to be read next to the math.

q(z | x, y) = N(mu, diag sigma^2)        encoder on [x ; onehot(y)]
p(z | y)    = N(0, I)                     the reference prior, or, with learned_prior,
            = N(mu_y, diag sigma_y^2)     one learned Gaussian per digit
p(x | z, y) = Bernoulli(sigmoid(f(z, y)))  decoder on [z ; onehot(y)]

-ELBO(x, y) = E_q[-log p(x | z, y)] + KL(q(z | x, y) || p(z | y))
            =        recon           +          kl            (nats per image)

The encoder and decoder are an MLP (the reference design) or a small CNN (architecture="conv"); both read the
same concatenated inputs, so everything below them is shared.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from cvae.errors import ConfigError
from cvae.model import ARCHITECTURES
from cvae.validate import check_choice

NUM_CLASSES = 10
IMAGE_SHAPE = (1, 28, 28)
NUM_PIXELS = math.prod(IMAGE_SHAPE)


def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers with ReLU between them (none after the last: it outputs parameters)."""
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


class ConvEncoder(nn.Module):
    """[x ; onehot(y)] -> (mu, log sigma^2): two stride-2 convolutions (28 -> 14 -> 7) on the image, then an MLP
    on [conv features ; onehot(y)]."""

    def __init__(self, latent_dim: int, channels: list[int], hidden_dims: list[int]):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(1, channels[0], 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels[0], channels[1], 4, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = mlp([channels[1] * 7 * 7 + NUM_CLASSES, *hidden_dims, 2 * latent_dim])

    def forward(self, x_and_y: torch.Tensor) -> torch.Tensor:
        x, y = x_and_y.split([NUM_PIXELS, NUM_CLASSES], dim=1)
        return self.head(torch.cat([self.convs(x.view(-1, *IMAGE_SHAPE)), y], dim=1))


class ConvDecoder(nn.Module):
    """[z ; onehot(y)] -> 784 logits: an MLP to a 7x7 feature map, then two stride-2 transposed convolutions
    (7 -> 14 -> 28), the encoder mirrored."""

    def __init__(self, latent_dim: int, channels: list[int], hidden_dims: list[int]):
        super().__init__()
        self.stem = nn.Sequential(
            mlp([latent_dim + NUM_CLASSES, *reversed(hidden_dims), channels[1] * 7 * 7]),
            nn.ReLU(),
            nn.Unflatten(1, (channels[1], 7, 7)),
        )
        self.deconvs = nn.Sequential(
            nn.ConvTranspose2d(channels[1], channels[0], 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(channels[0], 1, 4, stride=2, padding=1),
            nn.Flatten(),
        )

    def forward(self, z_and_y: torch.Tensor) -> torch.Tensor:
        return self.deconvs(self.stem(z_and_y))


class CVAE(nn.Module):
    def __init__(
        self,
        latent_dim: int = 2,
        hidden_dims: tuple[int, ...] = (512, 256),
        architecture: str = "mlp",
        channels: tuple[int, int] = (16, 32),
        learned_prior: bool = False,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        hidden_dims = list(hidden_dims)
        if architecture == "mlp":
            # [x ; y] -> 512 -> 256 -> (mu, log sigma^2)
            self.encoder = mlp([NUM_PIXELS + NUM_CLASSES, *hidden_dims, 2 * latent_dim])
            # [z ; y] -> 256 -> 512 -> 784 Bernoulli logits
            self.decoder = mlp([latent_dim + NUM_CLASSES, *reversed(hidden_dims), NUM_PIXELS])
        elif architecture == "conv":
            if len(channels) != 2:
                raise ConfigError(f"model.channels={list(channels)} must name 2 widths, e.g. model.channels=[32,64]")
            self.encoder = ConvEncoder(latent_dim, list(channels), hidden_dims)
            self.decoder = ConvDecoder(latent_dim, list(channels), hidden_dims)
        else:
            check_choice(architecture, ARCHITECTURES, "model.architecture")
        self.learned_prior = learned_prior
        if learned_prior:
            # p(z | y) = N(prior_mu[y], exp(prior_logvar[y])); zeros start it at the reference N(0, I)
            self.prior_mu = nn.Parameter(torch.zeros(NUM_CLASSES, latent_dim))
            self.prior_logvar = nn.Parameter(torch.zeros(NUM_CLASSES, latent_dim))

    def prior(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | tuple[None, None]:
        """(mu_y, log sigma_y^2) of p(z | y), or (None, None) for the reference N(0, I)."""
        if not self.learned_prior:
            return None, None
        return self.prior_mu[y], self.prior_logvar[y]

    def prior_latents(self, y: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """z ~ p(z | y) from standard normal noise eps: z = mu_y + sigma_y * eps (z = eps for N(0, I))."""
        mu, logvar = self.prior(y)
        return eps if mu is None else mu + torch.exp(0.5 * logvar) * eps

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
        """Images of the given digits, shape (B, 1, 28, 28) in [0, 1]: the Bernoulli means at z ~ p(z | y)."""
        if z is None:
            z = self.prior_latents(labels, torch.randn(len(labels), self.latent_dim, device=labels.device))
        return torch.sigmoid(self.decode(z, labels)).view(-1, *IMAGE_SHAPE)


def one_hot(y: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.one_hot(y, NUM_CLASSES).to(like.dtype)


def pixels(images: torch.Tensor) -> torch.Tensor:
    """Model input x: (N, 784) floats in [0, 1], from uint8 images (N, 28, 28) as MNIST stores them, or from
    floats already in [0, 1] of any shape with 784 values per image."""
    x = images.reshape(len(images), NUM_PIXELS)
    return x.float().div_(255) if x.dtype == torch.uint8 else x.float()


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def posterior_means(model: CVAE, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """E_q[z | x, y] of each image (uint8 or [0, 1] pixels, on any device), batch by batch: (N, latent_dim) on
    the CPU."""
    device = model_device(model)
    batches = zip(images.split(batch_size), labels.split(batch_size))
    return torch.cat([model.encode(pixels(x.to(device)), y.to(device))[0].cpu() for x, y in batches])


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


def negative_elbo(model: CVAE, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """The -ELBO terms per image (nats), with one reparameterized sample of z for the expectation."""
    logits, mu, logvar = model(x, y)
    recon = reconstruction_nll(logits, x)
    kl_dims = kl_per_dim(mu, logvar, *model.prior(y))
    kl = kl_dims.sum(dim=1)
    return {"nelbo": recon + kl, "recon": recon, "kl": kl, "kl_dims": kl_dims, "mu": mu, "logvar": logvar}


def importance_weighted_nll(model: CVAE, x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """-log p(x | y) estimated with k importance samples from q (Burda et al., 2016), per image:

        log p(x | y) >= log (1/k) sum_i p(x | z_i, y) p(z_i | y) / q(z_i | x, y),   z_i ~ q(z | x, y)

    k = 1 is the ELBO; the bound tightens as k grows.
    """
    mu, logvar = model.encode(x, y)
    eps = torch.randn(k, *mu.shape, device=mu.device, dtype=mu.dtype)
    z = mu + torch.exp(0.5 * logvar) * eps  # (k, B, latent_dim)
    logits = model.decode(z.flatten(0, 1), y.repeat(k)).view(k, *x.shape)
    log_px_given_z = -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
    prior_mu, prior_logvar = model.prior(y)
    if prior_mu is None:
        log_pz = -0.5 * (z.pow(2) + math.log(2 * math.pi)).sum(-1)
    else:
        log_pz = -0.5 * ((z - prior_mu).pow(2) / prior_logvar.exp() + prior_logvar + math.log(2 * math.pi)).sum(-1)
    log_qz = -0.5 * (eps.pow(2) + logvar + math.log(2 * math.pi)).sum(-1)
    log_weights = log_px_given_z + log_pz - log_qz
    return -(torch.logsumexp(log_weights, dim=0) - math.log(k))
