"""The latent space of a trained model: where real images land, what each region decodes to, paths through it and one
image's style drawn as every digit. Tensors in, images (..., 1, 28, 28) in [0, 1] on the CPU out; figures.py draws
them."""

import torch

from cvae.errors import ConfigError
from cvae.model.cvae import Net, model_device, posterior_means, prior_sample, sample
from cvae.model.network import IMAGE_SHAPE, NUM_CLASSES, one_hot
from cvae.sampling.prior import prior_latents
from cvae.validate import check_count, parse_digit

MANIFOLD_SIZE = 12  # z per axis in a manifold grid: enough to see the styles change smoothly


def project_2d(points: torch.Tensor) -> tuple[torch.Tensor, tuple[str, str]]:
    """Points in the plane and the names of their axes: z itself for latent_dim 2, the first two principal
    components above (exact SVD: deterministic, and cheap for a few thousand points), z beside 0 for 1."""
    latent_dim = points.shape[1]
    if latent_dim == 2:
        return points, ("z1", "z2")
    if latent_dim == 1:
        return torch.cat([points, torch.zeros_like(points)], dim=1), ("z1", "")
    centred = points - points.mean(dim=0)
    _, _, components = torch.linalg.svd(centred, full_matrices=False)
    return centred @ components[:2].T, ("PC1", "PC2")


@torch.no_grad()
def manifold_grid(model: Net, digit: int | str, size: int = MANIFOLD_SIZE) -> torch.Tensor:
    """(size * size, 1, 28, 28) decoded at evenly spaced quantiles of N(0, 1) on both axes of a 2-d latent, z1
    growing to the right and z2 upwards, as in latent_scatter."""
    if model.latent_dim != 2:
        raise ConfigError(f"a manifold grid needs latent_dim 2; this model has latent_dim {model.latent_dim}")
    check_count(size, "size")
    probabilities = torch.linspace(0.5 / size, 1 - 0.5 / size, size)  # cell centres: no infinite quantiles
    quantiles = torch.distributions.Normal(0.0, 1.0).icdf(probabilities)
    z2, z1 = torch.meshgrid(quantiles.flip(0), quantiles, indexing="ij")  # image rows run top-down
    z = torch.stack([z1.flatten(), z2.flatten()], dim=1).to(model_device(model))
    labels = torch.full((len(z),), parse_digit(digit), device=z.device)
    return sample(model, labels, z).cpu()


def lerp(start: torch.Tensor, end: torch.Tensor, steps: int) -> torch.Tensor:
    """steps points on the straight line from start to end, both ends included: (steps, *start.shape)."""
    t = torch.linspace(0, 1, check_count(steps, "steps"), device=start.device)
    return start + t.view(-1, *[1] * start.dim()) * (end - start)


@torch.no_grad()
def interpolate_within_digit(model: Net, digit: int | str, steps: int = 10, seed: int = 0) -> torch.Tensor:
    """One digit morphing in style between two z ~ p(z | y) (the same two noises for every digit, given the
    seed): (steps, 1, 28, 28)."""
    start, end = prior_latents(2, model.latent_dim, seed).to(model_device(model))
    labels = torch.full((steps,), parse_digit(digit), device=start.device)
    z = prior_sample(model, labels, lerp(start, end, steps))  # the prior's affine map keeps lines straight
    return sample(model, labels, z).cpu()


@torch.no_grad()
def interpolate_across_digits(
    model: Net, start: int | str, end: int | str, steps: int = 10, seed: int = 0
) -> torch.Tensor:
    """One style (a fixed z ~ N(0, I)) morphing from digit `start` to `end`, the decoder's label input moving from
    one one-hot vector to the other (for networks that `blends_labels`): (steps, 1, 28, 28)."""
    device = model_device(model)
    z = prior_latents(1, model.latent_dim, seed).to(device).expand(steps, -1)
    first, last = one_hot(torch.tensor([parse_digit(start, "start"), parse_digit(end, "end")], device=device), z)
    return sample(model, lerp(first, last, steps), z).cpu()


@torch.no_grad()
def style_transfer(model: Net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each real image's style (its posterior mean z) drawn as every digit 0-9: (N, 10, 1, 28, 28)."""
    mu = posterior_means(model, x, y).to(model_device(model))
    labels = torch.arange(NUM_CLASSES, device=mu.device).repeat(len(mu))
    images = sample(model, labels, mu.repeat_interleave(NUM_CLASSES, dim=0))
    return images.cpu().view(len(mu), NUM_CLASSES, *IMAGE_SHAPE)


def first_of_each_digit(labels: torch.Tensor) -> torch.Tensor:
    """Indices of the first image of each digit 0-9 (in order of digit; a digit absent from the labels is
    skipped): real sources for style transfer."""
    labels = labels.cpu()
    return torch.cat([(labels == digit).nonzero()[:1, 0] for digit in range(NUM_CLASSES)])
