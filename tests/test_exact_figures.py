"""Figures checked against independent computations: the importance-weighted bound against -log p(x | y) by
numerical quadrature over z, the logged FID and label accuracy against numpy/scipy on the same features, and the
training objective's KL weight, warm-up and free bits against the formulas, with train/nelbo the true -ELBO."""

import json
import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from scipy import linalg

from cvae.data.mnist import MNISTDataModule
from cvae.metrics.classifier import load_reference_classifier
from cvae.metrics.generation import balanced_labels
from cvae.model.checkpoint import load_module
from cvae.model.cvae import importance_weighted_nll, negative_elbo
from cvae.model.mlp import MLP
from cvae.model.module import CVAELitModule
from cvae.sampling.prior import decode, prior_latents


@pytest.fixture(scope="module")
def mnist(data_dir) -> MNISTDataModule:
    datamodule = MNISTDataModule(data_dir=data_dir)
    datamodule.setup()
    return datamodule


def pixels(images: torch.Tensor) -> torch.Tensor:
    return images.view(-1, 784).double() / 255


def log_marginal_by_quadrature(model: MLP, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log p(x | y) = log of the integral of p(x | z, y) N(z; 0, 1) dz, on a fine grid (latent_dim 1)."""
    z = torch.linspace(-8, 8, 8001, dtype=torch.float64)  # step 0.002
    log_joint = []
    for image, label in zip(x, y):
        logits = model.decode(z[:, None], label.repeat(len(z)))
        log_px = -F.binary_cross_entropy_with_logits(logits, image.expand_as(logits), reduction="none").sum(1)
        log_joint.append(torch.logsumexp(log_px - 0.5 * (z**2 + math.log(2 * math.pi)), 0) + math.log(z[1] - z[0]))
    return torch.stack(log_joint)


def test_importance_weighted_bound_approaches_the_exact_likelihood(mnist):
    """A latent_dim 1 model trained briefly, so q is not the posterior: the ELBO (k = 1) sits above the exact
    -log p(x | y), and the k-sample bound closes the gap as k grows."""
    torch.manual_seed(0)
    model = MLP(latent_dim=1, hidden_dims=(128, 64))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    images, labels = mnist.splits["train"]
    for x, y in zip(pixels(images[:3200]).float().split(64), labels[:3200].split(64)):
        optimizer.zero_grad()
        negative_elbo(model, x, y)["nelbo"].mean().backward()
        optimizer.step()
    model.double()
    x, y = pixels(mnist.splits["val"][0][:4]), mnist.splits["val"][1][:4]
    with torch.no_grad():
        exact = -log_marginal_by_quadrature(model, x, y)
        gap = {}
        for k in (1, 10, 1000):
            repeats = 4000 // k  # the bound is an expectation: average independent estimates, 4000 draws each
            bound = importance_weighted_nll(model, x.repeat(repeats, 1), y.repeat(repeats), k).view(repeats, -1)
            gap[k] = (bound.mean(0) - exact).mean().item()
    assert gap[1] > 0.1, f"the ELBO should be visibly loose here ({gap[1]:.3f} nats)"
    assert gap[1] > gap[10] > gap[1000] > -0.01, gap
    assert gap[1000] < 0.1 * gap[1], gap


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """FID from its definition, with scipy's matrix square root."""
    mu_real, mu_fake = real.mean(0), fake.mean(0)
    cov_real, cov_fake = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = linalg.sqrtm(cov_real @ cov_fake).real
    return float(((mu_real - mu_fake) ** 2).sum() + np.trace(cov_real + cov_fake - 2 * root))


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # per digit: 100 samples, 128-d features
@torch.no_grad()
def test_metrics_json_holds_the_fid_and_label_accuracy_of_the_best_checkpoint(trained_run, mnist):
    """val/fid and val/label_acc in metrics.json are those of best.ckpt, as numpy/scipy compute them on the same
    reference-classifier features: the 1000 class-balanced prior samples of the callback (seed 0) against all
    5000 validation images."""
    run_dir, _ = trained_run
    logged = json.loads((run_dir / "metrics.json").read_text())
    model = load_module(run_dir / logged["best_checkpoint"]).net
    classifier = load_reference_classifier()
    labels = balanced_labels(1000)
    fakes = decode(model, labels, prior_latents(1000, model.latent_dim, seed=0), batch_size=2000)
    real = classifier.features(pixels(mnist.splits["val"][0]).float()).double().numpy()
    fake = classifier.features(fakes).double().numpy()
    assert logged["val/fid"] == pytest.approx(frechet_distance(real, fake), rel=1e-4)
    correct = classifier(fakes).argmax(1) == labels
    assert logged["val/label_acc"] == pytest.approx(correct.double().mean().item(), abs=1e-6)
    for digit in range(10):
        assert logged[f"val/label_acc_digit/{digit}"] == pytest.approx(correct[labels == digit].double().mean().item())
        real_digit = real[(mnist.splits["val"][1] == digit).numpy()]
        expected = frechet_distance(real_digit, fake[(labels == digit).numpy()])
        assert logged[f"val/fid_digit/{digit}"] == pytest.approx(expected, rel=1e-3)


class RecordSteps(pl.Callback):
    """Before each training step: the weights, the random state and the KL weight in use; after it, the batch and
    the loss the step trained on."""

    def __init__(self):
        self.steps = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        weights = {name: tensor.clone() for name, tensor in pl_module.net.state_dict().items()}
        self.steps.append({"weights": weights, "random": torch.get_rng_state(), "kl_weight": pl_module.kl_weight()})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[-1].update(batch=batch, loss=outputs["loss"].item())


def test_beta_warm_up_and_free_bits_shape_the_objective_while_train_nelbo_stays_the_true_elbo(mnist):
    beta, warmup_epochs, free_bits, batches = 4.0, 2, 0.5, 5
    module = CVAELitModule(
        MLP(latent_dim=4),
        beta=beta,
        kl_warmup_epochs=warmup_epochs,
        free_bits=free_bits,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-3),
    )
    recorder = RecordSteps()
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=3,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder],
    )
    torch.manual_seed(0)
    trainer.fit(module, datamodule=mnist)
    # the weight ramps linearly, step by step, from 0 to beta over the first two epochs (10 steps), then stays
    expected_weights = [beta * min(1.0, step / (warmup_epochs * batches)) for step in range(3 * batches)]
    assert [step["kl_weight"] for step in recorder.steps] == pytest.approx(expected_weights)
    model, nelbos, clamped = MLP(latent_dim=4), [], 0
    for step, weight in zip(recorder.steps, expected_weights):
        model.load_state_dict(step["weights"])
        with torch.random.fork_rng():
            torch.set_rng_state(step["random"])  # the step's own noise
            terms = negative_elbo(model, *step["batch"])
        kl_per_dim = terms["kl_dims"].mean(0)  # batch mean, per latent dimension
        clamped += int((kl_per_dim < free_bits).sum())
        objective = terms["recon"].mean() + weight * kl_per_dim.clamp(min=free_bits).sum()
        assert step["loss"] == pytest.approx(objective.item(), rel=1e-5)
        nelbos.append(terms["nelbo"].mean().item())
    assert clamped > 0, "some dimensions fell under the free bits: the clamp was exercised"
    last_epoch = nelbos[-batches:]  # full batches of 128: the epoch mean is the mean of the batch means
    assert trainer.callback_metrics["train/nelbo"].item() == pytest.approx(sum(last_epoch) / batches, rel=1e-5)
    assert recorder.steps[-1]["loss"] != pytest.approx(nelbos[-1], rel=1e-3), "the objective is not the -ELBO here"
