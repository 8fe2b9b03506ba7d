"""The latent space in TensorBoard's Projector: the posterior means of fixed images with their digit labels and
thumbnails (a sprite), so a user can rotate it in 3-D, colour it by digit and run PCA, t-SNE or UMAP in the
browser (`tensorboard --logdir <run dir>`, Projector tab). During training from fixed validation images every n
epochs and after the last (cvae/callbacks/projector.py); from `python evaluate.py projector=true` for the first test
images."""

from pathlib import Path

import torch
from google.protobuf import text_format
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from torch.utils.tensorboard import SummaryWriter

from cvae.files import atomic_path
from cvae.model.cvae import Net, pixels, posterior_means
from cvae.model.network import IMAGE_SHAPE

TAG = "latent/posterior_mean"
# The Projector opens on a 3-D PCA. Of a 2-D latent its third component is undefined: every point is NaN and the
# panel reads "Total variance described: NaN%". Below 3 dimensions the points get zero coordinates up to 3, which
# changes no distance and lets the default view show them (the third axis is flat).
MIN_DIMS = 3
CONFIG_NAME = "projector_config.pbtxt"  # what the Projector reads: one entry per logged step


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
    newest_first(Path(writer.get_logdir()) / CONFIG_NAME)


def newest_first(config_path: Path) -> None:
    """The Projector opens on the first embedding of its config, and the SummaryWriter appends each new one: the
    config rewritten newest step first opens the Projector on the final epoch."""
    written = text_format.Parse(config_path.read_text(), ProjectorConfig())
    config = ProjectorConfig()
    config.embeddings.extend(
        sorted(written.embeddings, key=lambda info: int(info.tensor_name.rsplit(":", 1)[1]), reverse=True)
    )
    with atomic_path(config_path) as temporary:
        temporary.write_text(text_format.MessageToString(config))


def write_projector(model: Net, x: torch.Tensor, y: torch.Tensor, output_dir: str | Path) -> None:
    with SummaryWriter(log_dir=str(output_dir)) as writer:
        add_projector(writer, model, x, y, step=0)
