"""The latent space in TensorBoard's Projector: the posterior means of fixed images with their digits and thumbnails,
to rotate in 3-D, colour by digit and run PCA, t-SNE or UMAP on in the browser (docs/outputs.md)."""

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


def add_projector(writer: SummaryWriter, model: Net, x: torch.Tensor, y: torch.Tensor, step: int) -> None:
    """One Projector checkpoint: a point per image, labelled with its digit, drawn as the image itself."""
    z = posterior_means(model, x, y)
    writer.add_embedding(
        torch.nn.functional.pad(z, (0, max(0, MIN_DIMS - z.shape[1]))),
        metadata=y.tolist(),
        label_img=pixels(x).cpu().view(-1, *IMAGE_SHAPE),
        global_step=step,
        tag=TAG,
    )
    newest_first(Path(writer.get_logdir()) / CONFIG_NAME)


def newest_first(config_path: Path) -> None:
    """The Projector opens on the first of its tensors sorted by name, and names carry the step (`...:00120`), so
    it opened on the earliest epoch. The config is rewritten with the newest step named so that it sorts first
    (a space sorts before the colon) and listed first; the others keep their names."""
    written = text_format.Parse(config_path.read_text(), ProjectorConfig())
    embeddings = sorted(written.embeddings, key=lambda info: int(Path(info.tensor_path).parts[0]), reverse=True)
    config = ProjectorConfig()
    config.embeddings.extend(embeddings)
    for position, embedding in enumerate(config.embeddings):
        step = int(Path(embedding.tensor_path).parts[0])  # the step's folder, as SummaryWriter names it
        embedding.tensor_name = f"{TAG} (newest, step {step})" if position == 0 else f"{TAG}:{step:05d}"
    with atomic_path(config_path) as temporary:
        temporary.write_text(text_format.MessageToString(config))


def write_projector(model: Net, x: torch.Tensor, y: torch.Tensor, output_dir: str | Path) -> None:
    with SummaryWriter(log_dir=str(output_dir)) as writer:
        add_projector(writer, model, x, y, step=0)
