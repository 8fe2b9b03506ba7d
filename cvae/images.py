"""Image batches the project shows, laid out as grids (3, H, W) in [0, 1] for PNG files and TensorBoard:
prior samples one row per digit, reconstructions, and the pictures of cvae.generate."""

import torch
from torchvision.utils import make_grid

from cvae import generate
from cvae.model import CVAE, IMAGE_SHAPE, NUM_CLASSES


def image_grid(images: torch.Tensor, nrow: int = 10) -> torch.Tensor:
    """Images (N, 1, 28, 28) as a grid of nrow columns, separated by grey lines."""
    return make_grid(images.cpu(), nrow=nrow, pad_value=0.5)


def rows_grid(images: torch.Tensor) -> torch.Tensor:
    """Images (rows, columns, 1, 28, 28) as a grid of the same rows and columns."""
    return image_grid(images.flatten(0, 1), nrow=images.shape[1])


@torch.no_grad()
def digit_rows(model: CVAE, z: torch.Tensor) -> torch.Tensor:
    """A grid image with one row per digit 0-9, decoded from z of shape (10 * n, latent_dim)."""
    samples_per_digit = len(z) // NUM_CLASSES
    labels = torch.arange(NUM_CLASSES, device=z.device).repeat_interleave(samples_per_digit)
    return image_grid(model.sample(labels, z), nrow=samples_per_digit)


@torch.no_grad()
def reconstruction_rows(model: CVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Originals above their reconstructions, decoded at the posterior mean."""
    mu, _ = model.encode(x, y)
    recon = model.sample(y, mu)
    return image_grid(torch.cat([x.view(-1, *IMAGE_SHAPE), recon]), nrow=len(x))


def latent_map_images(model: CVAE, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """`latent_map`: the posterior means of real images coloured by digit (a PCA projection above 2 dims);
    with latent_dim 2 also `latent_manifold`: a manifold grid per digit, digits 0-4 above 5-9."""
    points, axis_names = generate.project_2d(generate.posterior_means(model, x, y))
    title = f"posterior means of {len(y)} images, latent_dim {model.latent_dim}"
    images = {"latent_map": generate.figure_image(generate.latent_scatter(points, y, axis_names, title))}
    if model.latent_dim == 2:
        # no lines inside a digit's grid, so it reads as one continuous surface
        grids = [
            make_grid(generate.manifold_grid(model, digit), nrow=generate.MANIFOLD_SIZE, padding=0)
            for digit in range(NUM_CLASSES)
        ]
        images["latent_manifold"] = make_grid(torch.stack(grids), nrow=5, padding=8, pad_value=1.0)
    return images


def interpolation_images(model: CVAE, steps: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """`interpolation_within_digit`: a row per digit, morphing between the same two z in every row;
    `interpolation_across_digits`: one fixed z, row d morphing from digit d into digit d + 1 (9 into 0)."""
    within = [generate.interpolate_within_digit(model, digit, steps, seed) for digit in range(NUM_CLASSES)]
    across = [
        generate.interpolate_across_digits(model, digit, (digit + 1) % NUM_CLASSES, steps, seed)
        for digit in range(NUM_CLASSES)
    ]
    return {
        "interpolation_within_digit": rows_grid(torch.stack(within)),
        "interpolation_across_digits": rows_grid(torch.stack(across)),
    }


def style_transfer_image(model: CVAE, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A row per real image: the image itself, then its style drawn as each digit 0-9."""
    sources = generate.pixels(x).view(-1, 1, *IMAGE_SHAPE).cpu()
    return rows_grid(torch.cat([sources, generate.style_transfer(model, x, y)], dim=1))
