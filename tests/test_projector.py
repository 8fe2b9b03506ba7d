"""TensorBoard's Projector: the embedding files written during training and by evaluate.py, read back, hold the
model's posterior means of the right images, their digits and their thumbnails."""

import io

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

from cvae.data.mnist import MNISTDataModule
from cvae.model.checkpoint import load_module
from tests.conftest import QUICK_EVALUATION, compose_config


def read_projector(log_dir) -> dict[str, tuple[torch.Tensor, list[int], np.ndarray]]:
    """Each embedding of projector_config.pbtxt: its vectors, labels and sprite (as the Projector reads them)."""
    config = text_format.Parse((log_dir / "projector_config.pbtxt").read_text(), ProjectorConfig())
    embeddings = {}
    for embedding in config.embeddings:
        rows = (log_dir / embedding.tensor_path).read_text().splitlines()
        vectors = torch.tensor([[float(value) for value in row.split("\t")] for row in rows])
        labels = [int(label) for label in (log_dir / embedding.metadata_path).read_text().split()]
        assert list(embedding.sprite.single_image_dim) == [28, 28]
        sprite = np.asarray(Image.open(io.BytesIO((log_dir / embedding.sprite.image_path).read_bytes())).convert("L"))
        embeddings[embedding.tensor_name] = vectors, labels, sprite
    return embeddings


def assert_projector_shows(embedding, model, images: torch.Tensor, labels: torch.Tensor) -> None:
    vectors, written_labels, sprite = embedding
    with torch.no_grad():
        means = model.encode(images, labels)[0]
    torch.testing.assert_close(vectors, means, rtol=1e-5, atol=1e-6)
    assert written_labels == labels.tolist()
    per_row = int(np.ceil(np.sqrt(len(labels))))
    thumbnails = sprite.reshape(per_row, 28, per_row, 28).transpose(0, 2, 1, 3).reshape(-1, 28, 28)
    expected = (images.view(-1, 28, 28) * 255).numpy()
    assert np.abs(thumbnails[: len(labels)].astype(float) - expected).max() <= 1, "thumbnail i is image i"


def test_training_puts_the_validation_posterior_means_into_the_projector(trained_run, data_dir):
    output_dir, _ = trained_run
    embeddings = read_projector(output_dir)
    newest = "latent/posterior_mean (newest, step 10)"
    assert list(embeddings) == [newest], "after the last epoch (step 10) only: every 5 epochs"
    datamodule = MNISTDataModule(data_dir=data_dir)
    datamodule.setup("fit")
    images, labels = next(iter(datamodule.val_dataloader()))  # the first 1000 validation images
    model = load_module(output_dir / "checkpoints" / "last.ckpt").net
    assert_projector_shows(embeddings[newest], model, images, labels)


def test_evaluate_writes_the_projector_of_the_first_test_images(trained_run, data_dir, tmp_path):
    from cvae.run.evaluate import evaluate

    output_dir, _ = trained_run
    checkpoint = output_dir / "checkpoints" / "best.ckpt"
    overrides = [f"ckpt_path={checkpoint}", f"data.data_dir={data_dir}", *QUICK_EVALUATION, "projector=true"]
    evaluate(compose_config("evaluate", [*overrides, "projector_images=50", "trainer.limit_test_batches=1"], tmp_path))
    datamodule = MNISTDataModule(data_dir=data_dir)
    datamodule.setup("test")
    images, labels = next(iter(datamodule.test_dataloader()))
    (embedding,) = read_projector(tmp_path).values()
    assert_projector_shows(embedding, load_module(checkpoint).net, images[:50], labels[:50])


def test_a_2d_latent_opens_in_the_projector_default_3d_pca(tmp_path):
    """TensorBoard's Projector opens on PCA components 1-3: a 2-D latent is written with a zero third coordinate,
    so the third component exists and every point has finite coordinates (a 2-D one showed "NaN%" and nothing)."""
    from cvae.explore.projector import write_projector
    from cvae.model.mlp import MLP

    model = MLP(latent_dim=2).eval()
    images, labels = torch.rand(40, 784), torch.arange(40) % 10
    write_projector(model, images, labels, tmp_path)
    ((vectors, _, _),) = read_projector(tmp_path).values()
    with torch.no_grad():
        torch.testing.assert_close(vectors[:, :2], model.encode(images, labels)[0], rtol=1e-5, atol=1e-6)
    assert vectors.shape == (40, 3) and not vectors[:, 2].any()
    centred = vectors - vectors.mean(0)  # the Projector's PCA: eigenvectors of the covariance, 3 shown
    _, variances, components = torch.linalg.svd(centred.T @ centred / len(centred))
    assert components.shape == (3, 3) and torch.isfinite(centred @ components.T).all()
    assert variances[:3].sum() / variances.sum() == pytest.approx(1.0)
