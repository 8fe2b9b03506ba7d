"""The short Python API (docs/evaluation.md): `cvae.load(ckpt)` draws digits and strings, encodes, reconstructs and
maps the latent space; images come back on the CPU in [0, 1], (N, 1, 28, 28) or (rows, columns, 1, 28, 28)."""

import json
import os
from pathlib import Path

import numpy as np
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from cvae.data.mnist import MNISTDataModule, split_tensors
from cvae.explore.digits import digit_strings, digit_variants
from cvae.explore.figures import image_grid, latent_map_images, rows_grid
from cvae.model.checkpoint import load_module
from cvae.model.cvae import pixels, posterior_means, reconstruct
from cvae.sampling.gmm import GaussianMixtureSampler
from cvae.sampling.prior import PriorSampler, Sampler
from cvae.validate import check_choice


class Generator:
    """A trained conditional VAE and the sampler its z come from (the same seed, the same images)."""

    def __init__(self, ckpt_path: str | Path, sampler: Sampler | None = None):
        self.ckpt_path = Path(ckpt_path)
        self.model = load_module(ckpt_path).net
        self.sampler = sampler or PriorSampler()

    def digits(self, digit: int | str, n: int = 8, seed: int = 0) -> torch.Tensor:
        """n styles of one digit: (n, 1, 28, 28)."""
        return digit_variants(self.model, digit, n, seed, self.sampler)

    def string(self, digits: int | str, variants: int = 4, seed: int = 0) -> torch.Tensor:
        """A digit string ("2026" or 2026) in `variants` styles: (variants, len(digits), 1, 28, 28)."""
        return digit_strings(self.model, digits, variants, seed, self.sampler)

    def encode(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Posterior means E[z | x, y] of images (uint8 or [0, 1]): (N, latent_dim)."""
        return posterior_means(self.model, images, labels)

    def reconstruct(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Images decoded at their posterior means: (N, 1, 28, 28)."""
        return reconstruct(self.model, images, labels).cpu()

    def latent_map(self, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
        """The posterior means coloured by digit (above latent_dim 2: two principal components): (H, W, 3)."""
        return picture(latent_map_images(self.model, pixels(images), labels)["latent_map"])


def load(ckpt_path: str | Path, sampler: str | Sampler = "prior", data_dir: str | None = None) -> Generator:
    """A checkpoint ready to draw. sampler: "prior", "gmm" (the ex-post mixture per digit, evaluate.py's defaults)
    or a sampler object; a mixture is fitted to the training images in data_dir, or its fit beside the checkpoint
    reused."""
    if isinstance(sampler, str):
        sampler = (
            PriorSampler()
            if check_choice(sampler, ("prior", "gmm"), "sampler") == "prior"
            else GaussianMixtureSampler()
        )
    generator = Generator(ckpt_path, sampler)
    if not isinstance(sampler, PriorSampler):  # the prior needs no data
        sampler.fit_for_checkpoint(generator.model, *mnist("train", data_dir), ckpt_path)
    return generator


def mnist(split: str = "test", data_dir: str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A split of MNIST as the project splits it: uint8 images (N, 28, 28), labels; data_dir holds MNIST/raw/."""
    datamodule = MNISTDataModule(data_dir=data_dir or os.environ.get("CVAE_DATA_DIR", "data"))
    datamodule.setup()
    return split_tensors(datamodule, split)


def picture(images: torch.Tensor) -> np.ndarray:
    """Images (N, 1, 28, 28) in rows of ten, (rows, columns, 1, 28, 28) as rows, or a (3, H, W) image, for
    plt.imshow: (H, W, 3)."""
    grid = {5: rows_grid, 4: image_grid}.get(images.dim(), lambda image: image)(images)
    return grid.permute(1, 2, 0).clamp(0, 1).numpy()


def run_metrics(run_dir: str | Path) -> dict:
    """A run's metrics.json: the best checkpoint's validation and test figures."""
    return json.loads((Path(run_dir) / "metrics.json").read_text())


def run_scalars(run_dir: str | Path, tag: str) -> list[tuple[int, float]]:
    """(step, value) of one TensorBoard scalar of a run, e.g. "val/nelbo"."""
    return [(event.step, event.value) for event in EventAccumulator(str(run_dir)).Reload().Scalars(tag)]
