"""The Python API (cvae.load, cvae/api.py) on a real checkpoint, and notebooks/quickstart.ipynb executed headless by
a real Jupyter kernel (`jupyter execute`, as README says): any error in any cell fails the test."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import cvae
from cvae.errors import ConfigError
from cvae.explore.digits import digit_strings
from cvae.metrics.classifier import load_reference_classifier
from cvae.model.checkpoint import load_module
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


def test_the_quickstart_notebook_runs_headless_as_readme_says(tmp_path, data_dir):
    """README's headless command, `jupyter execute notebooks/quickstart.ipynb` from the project root (the kernel
    starts in notebooks/), with README's offline note: a data dir relative to the project root (../shared/data). The
    notebook trains its small model as written into a test folder, then every cell runs, writing nothing to stderr.
    Its promises, checked here on the model it trained: the reference classifier reads >= 95 % of the digits of its
    string as the digits asked for, and its curve has a point per epoch."""
    run, executed = tmp_path / "run", tmp_path / "executed.ipynb"
    env = {**os.environ, "CVAE_DATA_DIR": os.path.relpath(data_dir, ROOT), "CVAE_QUICKSTART_RUN_DIR": str(run)}
    env.pop("CVAE_QUICKSTART_CKPT", None)
    # the `jupyter` this environment's install put beside its python; --output keeps the outputs to check
    jupyter = Path(sys.executable).with_name("jupyter")
    command = [str(jupyter), "execute", "notebooks/quickstart.ipynb", f"--output={executed}"]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = [output for cell in nbformat.read(executed, as_version=4).cells for output in cell.get("outputs", [])]
    assert [output for output in outputs if output.get("name") == "stderr"] == [], "a warning or a log in a cell"
    printed = "".join(output.get("text", "") for output in outputs)

    # the string the notebook draws, read by the reference classifier here, from the checkpoint it trained
    net = load_module(run / "checkpoints" / "best.ckpt").net
    strip = digit_strings(net, "20261120", variants=4, seed=0)
    read = load_reference_classifier()(strip.flatten(0, 1)).argmax(dim=1)
    asked = torch.tensor([2, 0, 2, 6, 1, 1, 2, 0]).repeat(4)
    accuracy = (read == asked).float().mean().item()
    assert accuracy >= 0.95, f"the reference classifier reads only {accuracy:.0%} of the string as asked"
    rows = ["".join(map(str, row.tolist())) for row in read.view(4, 8)]
    assert f"the reference classifier reads: {' '.join(rows)}" in printed, "the notebook shows what it drew"

    metrics = cvae.api.run_metrics(run)
    assert f"'val/label_acc': {round(metrics['val/label_acc'], 3)}" in printed and metrics["val/label_acc"] >= 0.95
    # the curve: every val/nelbo event of the run's TensorBoard log, read here, one per epoch trained
    events = EventAccumulator(str(run)).Reload().Scalars("val/nelbo")
    assert metrics["epochs"] >= 2 and len(events) == metrics["epochs"] == len({event.step for event in events})
    curve = {epoch: round(event.value, 2) for epoch, event in enumerate(events, start=1)}
    assert f"val/nelbo by epoch: {curve}" in printed
    images = [output for output in outputs if "image/png" in output.get("data", {})]
    assert len(images) == 3, "the samples, the reconstructions with the latent map, and the curve"
