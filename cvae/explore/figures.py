"""What the project shows, as images (3, H, W) in [0, 1] for PNG files and every logger: sample grids, reconstructions,
the latent map, interpolations and style transfer; and the same grids drawn for people (larger, a label per row)."""

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, ImageDraw, ImageFont
from torchvision.utils import make_grid

from cvae.explore import latent
from cvae.model.cvae import Net, pixels, posterior_means, reconstruct, sample
from cvae.model.network import IMAGE_SHAPE, NUM_CLASSES

GRID_PADDING = 2  # pixels between the images of a grid (make_grid's default)
# a 28-pixel digit is a smudge on a screen: PNG files show each pixel as scale x scale (evaluate.py's picture_scale)
PICTURE_SCALE = 4


def image_grid(images: torch.Tensor, nrow: int = 10) -> torch.Tensor:
    """Images (N, 1, 28, 28) as a grid of nrow columns, separated by grey lines."""
    return make_grid(images.cpu(), nrow=nrow, padding=GRID_PADDING, pad_value=0.5)


def for_people(grid: torch.Tensor, row_labels: Sequence[str], scale: int = PICTURE_SCALE) -> torch.Tensor:
    """A grid image (3, H, W) of image_grid, each pixel drawn as scale x scale (nearest neighbour: crisp), with
    a label left of each of its rows in a white margin."""
    large = grid.repeat_interleave(scale, dim=1).repeat_interleave(scale, dim=2)
    font = ImageFont.load_default(size=7 * scale + 6)
    margin = 2 * scale + 4
    label_width = margin + max(int(font.getlength(label)) for label in row_labels) + margin
    picture = Image.new("RGB", (label_width + large.shape[2], large.shape[1]), "white")
    picture.paste(Image.fromarray((large * 255).round().byte().permute(1, 2, 0).numpy()), (label_width, 0))
    row_height = (grid.shape[1] - GRID_PADDING) / len(row_labels) * scale
    draw = ImageDraw.Draw(picture)
    for row, label in enumerate(row_labels):
        middle = GRID_PADDING * scale + row_height * row + (row_height - GRID_PADDING * scale) / 2
        draw.text((label_width - margin, middle), label, fill="black", font=font, anchor="rm")
    return torch.from_numpy(np.asarray(picture).copy()).permute(2, 0, 1).float() / 255


def rows_grid(images: torch.Tensor) -> torch.Tensor:
    """Images (rows, columns, 1, 28, 28) as a grid of the same rows and columns."""
    return image_grid(images.flatten(0, 1), nrow=images.shape[1])


@torch.no_grad()
def digit_rows(model: Net, z: torch.Tensor) -> torch.Tensor:
    """A grid image with one row per digit 0-9, decoded from z of shape (10 * n, latent_dim)."""
    samples_per_digit = len(z) // NUM_CLASSES
    labels = torch.arange(NUM_CLASSES, device=z.device).repeat_interleave(samples_per_digit)
    return image_grid(sample(model, labels, z), nrow=samples_per_digit)


@torch.no_grad()
def reconstruction_rows(model: Net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Originals above their reconstructions, decoded at the posterior mean."""
    return image_grid(torch.cat([x.view(-1, *IMAGE_SHAPE), reconstruct(model, x, y)]), nrow=len(x))


def latent_map_images(
    model: Net, x: torch.Tensor, y: torch.Tensor, one_per_digit: bool = False
) -> dict[str, torch.Tensor]:
    """`latent_map`: the posterior means of real images coloured by digit; with latent_dim 2 also `latent_manifold`,
    a manifold grid per digit (0-4 above 5-9), or with `one_per_digit` `latent_manifold/<d>` each on its own (a
    TensorBoard card holds one at about its own size: the ten together were too small there to read)."""
    points, axis_names = latent.project_2d(posterior_means(model, x, y))
    title = f"posterior means of {len(y)} images, latent_dim {model.latent_dim}"
    images = {"latent_map": latent_scatter(points, y, axis_names, title)}
    if model.latent_dim == 2:
        # no lines inside a digit's grid, so it reads as one continuous surface
        grids = [
            make_grid(latent.manifold_grid(model, digit), nrow=latent.MANIFOLD_SIZE, padding=0)
            for digit in range(NUM_CLASSES)
        ]
        if one_per_digit:
            images.update({f"latent_manifold/{digit}": grid for digit, grid in enumerate(grids)})
        else:
            images["latent_manifold"] = make_grid(torch.stack(grids), nrow=5, padding=8, pad_value=1.0)
    return images


def interpolation_images(model: Net, steps: int = 10, seed: int = 0) -> dict[str, torch.Tensor]:
    """`interpolation_within_digit`: a row per digit between the same two z; `interpolation_across_digits` (for
    networks that `blends_labels`): one fixed z, row d morphing from digit d into d + 1 (9 into 0)."""
    within = [latent.interpolate_within_digit(model, digit, steps, seed) for digit in range(NUM_CLASSES)]
    images = {"interpolation_within_digit": rows_grid(torch.stack(within))}
    if getattr(model, "blends_labels", False):
        across = [
            latent.interpolate_across_digits(model, digit, (digit + 1) % NUM_CLASSES, steps, seed)
            for digit in range(NUM_CLASSES)
        ]
        images["interpolation_across_digits"] = rows_grid(torch.stack(across))
    return images


def style_transfer_image(model: Net, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A row per real image: the image itself, then its style drawn as each digit 0-9."""
    sources = pixels(x).view(-1, 1, *IMAGE_SHAPE).cpu()
    return rows_grid(torch.cat([sources, latent.style_transfer(model, x, y)], dim=1))


def latent_scatter(points: torch.Tensor, labels: torch.Tensor, axis_names: tuple[str, str], title: str) -> torch.Tensor:
    """A scatter of 2-D points coloured by digit, with a legend, rendered as an image. A bare Figure (no pyplot):
    no global state, no display needed."""
    figure = Figure(figsize=(6, 6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    # drawn in a shuffled (fixed) order, so no digit is painted over all the others
    order = torch.randperm(len(points), generator=torch.Generator().manual_seed(0))
    colours = [f"C{digit}" for digit in labels.cpu()[order].tolist()]
    axes.scatter(*points[order].T.tolist(), c=colours, s=3, alpha=0.6)
    legend = [
        Line2D([], [], marker="o", linestyle="", color=f"C{digit}", label=str(digit)) for digit in range(NUM_CLASSES)
    ]
    axes.legend(handles=legend, title="digit", loc="upper right", fontsize="small")
    axes.set(xlabel=axis_names[0], ylabel=axis_names[1], title=title)
    figure.tight_layout()
    figure.canvas.draw()
    rgba = torch.from_numpy(np.asarray(figure.canvas.buffer_rgba()).copy())
    return rgba[..., :3].permute(2, 0, 1).float() / 255
