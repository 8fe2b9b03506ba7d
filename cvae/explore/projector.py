"""The latent space in TensorBoard's Projector: the posterior means of fixed images with their digit labels and
thumbnails (a sprite), so a user can rotate it in 3-D, colour it by digit and run PCA, t-SNE or UMAP in the
browser (`tensorboard --logdir <run dir>`, Projector tab). During training from fixed validation images every n
epochs and after the last (cvae/callbacks/projector.py); from `python evaluate.py projector=true` for the first test
images."""

from pathlib import Path

import torch
from torch.utils.tensorboard import SummaryWriter

from cvae.model.cvae import Net, pixels, posterior_means
from cvae.model.network import IMAGE_SHAPE

TAG = "latent/posterior_mean"
# The Projector opens on a 3-D PCA. Of a 2-D latent its third component is undefined: every point is NaN and the
# panel reads "Total variance described: NaN%". Below 3 dimensions the points get zero coordinates up to 3, which
# changes no distance and lets the default view show them (the third axis is flat).
MIN_DIMS = 3


def projector_points(z: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.pad(z, (0, max(0, MIN_DIMS - z.shape[1])))


def add_projector(writer: SummaryWriter, model: Net, x: torch.Tensor, y: torch.Tensor, step: int) -> None:
    """One Projector checkpoint: a point per image, labelled with its digit, drawn as the image itself."""
    writer.add_embedding(
        projector_points(posterior_means(model, x, y)),
        metadata=y.tolist(),
        label_img=pixels(x).cpu().view(-1, *IMAGE_SHAPE),
        global_step=step,
        tag=TAG,
    )


def write_projector(model: Net, x: torch.Tensor, y: torch.Tensor, output_dir: str | Path) -> None:
    with SummaryWriter(log_dir=str(output_dir)) as writer:
        add_projector(writer, model, x, y, step=0)
