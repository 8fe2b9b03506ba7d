"""The Python API (cvae.load, cvae/api.py) on a real checkpoint, and notebooks/quickstart.ipynb executed by a real
Jupyter kernel (nbclient, ipykernel): any error in any cell fails the test."""

import os
import shutil

import nbformat
import pytest
import torch
from nbclient import NotebookClient

import cvae
from cvae.errors import ConfigError
from cvae.model.cvae import sample
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def checkpoint(trained_run, tmp_path_factory):
    """The shared run's best checkpoint, copied: the mixture fit is saved beside it."""
    copy = tmp_path_factory.mktemp("api") / "best.ckpt"
    shutil.copy(trained_run[0] / "checkpoints" / "best.ckpt", copy)
    return copy


def test_load_draws_digits_and_strings_the_same_for_the_same_seed(checkpoint):
    model = cvae.load(checkpoint)
    sevens = model.digits(7, n=3, seed=1)
    assert sevens.shape == (3, 1, 28, 28) and 0 <= sevens.min() and sevens.max() <= 1
    assert torch.equal(sevens, model.digits("7", n=3, seed=1)) and not torch.equal(sevens, model.digits(7, 3, seed=2))
    assert model.string(2026, variants=2).shape == (2, 4, 1, 28, 28)
    assert cvae.api.picture(model.string("2026", variants=2)).shape == (2 * 30 + 2, 4 * 30 + 2, 3)


def test_encode_reconstruct_and_the_latent_map(checkpoint, data_dir):
    model = cvae.load(checkpoint)
    images, labels = cvae.api.mnist("test", data_dir)
    z = model.encode(images[:50], labels[:50])
    assert z.shape == (50, 3)
    recon = model.reconstruct(images[:50], labels[:50])
    assert recon.shape == (50, 1, 28, 28)
    assert torch.equal(recon[:, 0], sample(model.model, labels[:50], z).view(-1, 28, 28)), "decoded at the mean"
    picture = model.latent_map(images[:200], labels[:200])
    assert picture.ndim == 3 and picture.shape[2] == 3


def test_a_mixture_sampler_and_a_bad_sampler_name(checkpoint, data_dir):
    from cvae.sampling.gmm import GaussianMixtureSampler

    quick = GaussianMixtureSampler(components=2, covariance="diag", max_iterations=5)  # "gmm": 10, full, 200
    model = cvae.load(checkpoint, sampler=quick, data_dir=data_dir)
    assert type(model.sampler).__name__ == "GaussianMixtureSampler" and model.digits(3, n=2).shape == (2, 1, 28, 28)
    assert list(checkpoint.parent.glob("best.ckpt.gmm*.pt")), "the fit is saved beside the checkpoint for reuse"
    with pytest.raises(ConfigError, match="sampler='flow'"):
        cvae.load(checkpoint, sampler="flow")


def test_run_metrics_and_scalars(trained_run):
    run_dir, metrics = trained_run
    assert cvae.api.run_metrics(run_dir)["test/nelbo"] == pytest.approx(metrics["test/nelbo"])
    assert len(cvae.api.run_scalars(run_dir, "val/nelbo")) == 2, "one per epoch"


def test_the_quickstart_notebook_runs_from_its_folder_as_readme_says(tmp_path, monkeypatch, data_dir):
    """The kernel starts in notebooks/, with README's offline note: a data dir relative to the project root
    (../shared/data). The notebook trains its small model as written (320 batches) into a test folder, then every
    cell runs; the kernel inherits the environment. Its digits are legible: the reference classifier reads most of
    the digits it generates as the digit asked for (val/label_acc, the figure the notebook prints)."""
    monkeypatch.setenv("CVAE_DATA_DIR", os.path.relpath(data_dir, ROOT))
    monkeypatch.setenv("CVAE_QUICKSTART_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.delenv("CVAE_QUICKSTART_CKPT", raising=False)
    notebook = nbformat.read(ROOT / "notebooks" / "quickstart.ipynb", as_version=4)
    where = {"metadata": {"path": ROOT / "notebooks"}}
    NotebookClient(notebook, timeout=120, kernel_name="python3", resources=where).execute()  # fails on any error
    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    printed = "".join(output.get("text", "") for output in outputs)
    assert "test/nelbo" in printed and "val/label_acc" in printed
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").exists()
    label_acc = cvae.api.run_metrics(tmp_path / "run")["val/label_acc"]
    assert f"'val/label_acc': {round(label_acc, 3)}" in printed
    assert label_acc >= 0.8, f"only {label_acc:.0%} of the notebook's generated digits read as the digit asked for"
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) >= 3, "the samples, reconstructions and latent map, and the curve, were plotted"
