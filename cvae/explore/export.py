"""Synthetic data: samples of every digit in MNIST's own layout (uint8 (N, 28, 28), int64 labels), written as
<name>.pt, <name>.npz and, if asked, a folder of PNG files per digit; and the reader of such sets."""

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from cvae.errors import ConfigError
from cvae.explore import IMAGE_SET_SUFFIXES
from cvae.files import atomic_path, save_torch_atomic
from cvae.model.cvae import Net
from cvae.model.network import IMAGE_SHAPE, NUM_CLASSES, NUM_PIXELS
from cvae.sampling.prior import Sampler, generate, grid_labels
from cvae.trust import first_line
from cvae.validate import check_count


def synthetic_dataset(
    model: Net,
    per_digit: int,
    seed: int = 0,
    batch_size: int = 1000,
    progress: bool = False,
    sampler: Sampler | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """per_digit samples of each digit as MNIST stores them, uint8 images (N, 28, 28) and int64 labels (N,), sorted
    by digit (shuffle them for training)."""
    labels = grid_labels(check_count(per_digit, "export.per_digit"))
    images = generate(model, labels, seed, sampler, batch_size, "synthetic digits" if progress else None).cpu()
    return images.mul(255).round().to(torch.uint8).view(-1, *IMAGE_SHAPE[1:]), labels


def write_synthetic_dataset(
    images: torch.Tensor,
    labels: torch.Tensor,
    output_dir: str | Path,
    name: str = "synthetic",
    image_folder: bool = False,
    progress: bool = False,
) -> list[Path]:
    """<name>.pt (torch.load(path, weights_only=True) gives {"images", "labels"}), <name>.npz (numpy.load gives
    the same arrays) and, if asked, <name>/<digit>/<index>.png. Returns the paths written."""
    output_dir = Path(output_dir)
    images, labels = images.cpu(), labels.cpu()
    torch_path, numpy_path, folder = output_dir / f"{name}.pt", output_dir / f"{name}.npz", output_dir / name
    save_torch_atomic(torch_path, {"images": images, "labels": labels})
    with atomic_path(numpy_path) as temporary, open(temporary, "wb") as file:  # a file object: no ".npz" added
        np.savez(file, images=images.numpy(), labels=labels.numpy())
    if not image_folder:
        return [torch_path, numpy_path]
    with atomic_path(folder, directory=True) as temporary:
        for digit in range(NUM_CLASSES):
            (temporary / str(digit)).mkdir()
        counts = [0] * NUM_CLASSES  # PNG files numbered in order within their digit
        pairs = list(zip(images.numpy(), labels.tolist()))
        for image, label in tqdm(pairs, desc="PNG files", unit="image", disable=not progress):
            Image.fromarray(image).save(temporary / str(label) / f"{counts[label]:06d}.png")
            counts[label] += 1
    return [torch_path, numpy_path, folder]


def load_image_set(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels from a .pt ({"images", "labels"}, read with weights_only=True) or an .npz (arrays
    `images` and `labels`), as write_synthetic_dataset writes them: uint8 (N, 28, 28) or floats in [0, 1]."""
    path = Path(path)
    if path.suffix not in IMAGE_SET_SUFFIXES:
        raise ConfigError(f"anomaly.scores_for={str(path)!r} is neither test, a .pt nor an .npz file")
    try:  # as data only: torch's weights_only and numpy's allow_pickle=False never unpickle code
        if path.suffix == ".pt":
            arrays = torch.load(path, map_location="cpu", weights_only=True)
        else:
            with np.load(path, allow_pickle=False) as npz:
                arrays = {key: torch.from_numpy(npz[key]) for key in npz.files}
    except Exception as error:  # damaged, or holding objects beyond arrays (refused unread: nothing in it runs)
        detail = first_line(error)[:200]
        raise ConfigError(f"anomaly.scores_for={path} cannot be read as images and labels ({detail})") from None
    if not isinstance(arrays, dict) or not {"images", "labels"} <= arrays.keys():
        raise ConfigError(f"{path} does not hold both 'images' and 'labels'")
    images, labels = arrays["images"], arrays["labels"]
    if not all(isinstance(part, torch.Tensor) for part in (images, labels)):
        raise ConfigError(f"{path}: 'images' and 'labels' must be arrays")
    if len(images) == 0 or images[0].numel() != NUM_PIXELS or len(images) != len(labels) or labels.dim() != 1:
        raise ConfigError(
            f"{path}: expected N images of 28x28 and N labels, got {tuple(images.shape)} and {tuple(labels.shape)}"
        )
    if labels.is_floating_point() or labels.is_complex() or ((labels < 0) | (labels >= NUM_CLASSES)).any():
        raise ConfigError(f"{path}: labels must be whole numbers 0-{NUM_CLASSES - 1}")
    return images, labels.long()
