"""The samplers of cvae/sampler.py: the EM fit against a mixture with known parameters, the GMM sampler's
determinism and its per-digit draws, the fit saved beside a checkpoint, and the sampler that evaluate.py and
the generation-quality callback actually use."""

import contextlib
import shutil
import warnings
from types import SimpleNamespace

import pytest
import torch
from torch.distributions import MultivariateNormal
from torchvision.utils import save_image

from cvae.api import mnist
from cvae.callbacks.quality import GenerationQuality
from cvae.data.mnist import MNISTDataModule, split_tensors
from cvae.explore.figures import digit_rows, for_people, image_grid
from cvae.metrics.generation import balanced_labels, conditional_generation_metrics
from cvae.model.checkpoint import load_module
from cvae.model.mlp import MLP
from cvae.model.network import NUM_CLASSES
from cvae.sampling import gmm
from cvae.sampling.gmm import GaussianMixtureSampler, fit_gaussian_mixture
from cvae.sampling.prior import PriorSampler, decode
from tests.conftest import QUICK_EVALUATION, compose_config


@pytest.fixture(scope="module")
def train_slice(data_dir):
    """2,000 real training images (about 200 per digit) and their labels."""
    datamodule = MNISTDataModule(data_dir=data_dir)
    datamodule.setup()
    images, labels = split_tensors(datamodule, "train")
    return images[:2000], labels[:2000]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return MLP(latent_dim=3).eval()


@pytest.fixture(scope="module")
def fitted(model, train_slice):
    return GaussianMixtureSampler(components=3, fit_seed=1).fit(model, *train_slice)


def mixture_moments(weights, means, scale_tril):
    """Mean and covariance of a Gaussian mixture: sum_k pi_k m_k and sum_k pi_k (S_k + m_k m_k^T) - mu mu^T."""
    mean = weights @ means
    second = torch.einsum("k,kde->de", weights, scale_tril @ scale_tril.mT + means[:, :, None] * means[:, None, :])
    return mean, second - torch.outer(mean, mean)


def test_em_recovers_a_known_mixture():
    torch.manual_seed(0)  # the points drawn from the known mixture
    truth = MultivariateNormal(
        torch.tensor([[0.0, 0.0], [6.0, 3.0]], dtype=torch.float64),
        torch.tensor([[[1.0, 0.5], [0.5, 1.0]], [[0.5, 0.0], [0.0, 2.0]]], dtype=torch.float64),
    )
    generator = torch.Generator().manual_seed(0)
    points = torch.cat([truth.sample((3000,))[:, 0], truth.sample((1000,))[:, 1]])[
        torch.randperm(4000, generator=generator)
    ]
    fit = fit_gaussian_mixture(points, 2, "full", seed=0)
    order = fit["means"][:, 0].argsort()
    torch.testing.assert_close(
        fit["weights"][order], torch.tensor([0.75, 0.25], dtype=torch.float64), atol=0.01, rtol=0
    )
    torch.testing.assert_close(fit["means"][order], truth.mean, atol=0.15, rtol=0)
    covariances = fit["scale_tril"] @ fit["scale_tril"].mT
    torch.testing.assert_close(covariances[order], truth.covariance_matrix, atol=0.25, rtol=0)
    diagonal = fit_gaussian_mixture(points, 2, "diag", seed=0)["scale_tril"]
    assert torch.equal(diagonal, torch.diag_embed(diagonal.diagonal(dim1=1, dim2=2))), "diag: no correlations"


def test_em_runs_on_one_blas_thread_and_fits_as_the_librarys_threads_do(monkeypatch):
    """EM on a few thousand points is about 5x slower on the BLAS library's threads (python -m benchmarks.mixture):
    the fit runs on one, and equals the fit on the library's own thread count to float rounding."""
    from sklearn.mixture import GaussianMixture
    from threadpoolctl import threadpool_info

    points = torch.randn(2000, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    seen, fit = [], GaussianMixture.fit
    monkeypatch.setattr(GaussianMixture, "fit", lambda self, x: seen.append(threadpool_info()) or fit(self, x))
    limited = fit_gaussian_mixture(points, 3, "full", seed=0)
    assert {pool["num_threads"] for pool in seen[0] if pool["user_api"] == "blas"} == {1}
    monkeypatch.setattr(gmm, "threadpool_limits", lambda **_: contextlib.nullcontext())
    unlimited = fit_gaussian_mixture(points, 3, "full", seed=0)
    for key, value in unlimited.items():
        torch.testing.assert_close(limited[key], value, rtol=1e-9, atol=1e-9)


def test_em_stopped_by_max_iterations_prints_nothing():
    """EM runs sampler.max_iterations by design (tol 1e-6): scikit-learn's "did not converge", once per digit and
    fit, would only be noise on the console."""
    points = torch.randn(500, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit_gaussian_mixture(points, 5, "full", seed=0, max_iterations=2)


def test_gmm_fit_and_draws_are_deterministic_given_the_seed(model, train_slice, fitted):
    again = GaussianMixtureSampler(components=3, fit_seed=1).fit(model, *train_slice)
    assert all(torch.equal(fitted.mixture[key], again.mixture[key]) for key in fitted.mixture)
    labels = balanced_labels(100)
    assert torch.equal(fitted.latents(model, labels, seed=5), fitted.latents(model, labels, seed=5))
    assert not torch.equal(fitted.latents(model, labels, seed=5), fitted.latents(model, labels, seed=6))


def test_gmm_draws_for_digit_d_come_from_digit_ds_mixture(model, fitted):
    """20,000 draws of each digit have the mean and covariance of that digit's fitted mixture, and differ
    from every other digit's."""
    mixture = fitted.mixture
    for digit in (0, 4, 7):
        z = fitted.latents(model, torch.full((20_000,), digit), seed=digit).double()
        mean, covariance = mixture_moments(
            mixture["weights"][digit], mixture["means"][digit], mixture["scale_tril"][digit]
        )
        spread = covariance.diagonal().sqrt()
        torch.testing.assert_close(z.mean(0), mean, atol=0.05 * spread.max().item(), rtol=0)
        torch.testing.assert_close(torch.cov(z.T), covariance, atol=0.1 * covariance.abs().max().item(), rtol=0)
        for other in set(range(NUM_CLASSES)) - {digit}:
            other_mean = mixture["weights"][other] @ mixture["means"][other]
            assert (other_mean - mean).abs().max() > (z.mean(0) - mean).abs().max()


def test_temperature_pulls_each_gmm_draw_toward_its_components_mean(model, fitted):
    """z = m_k + t * L_k eps with the draws of t = 1 (the same component and noise): 2 z(0.5) - z(1) is the mean of
    a component of the label's digit, for every draw; t = 1, the default, is the draw of before to the bit."""
    labels = balanced_labels(1000)
    full, half = (GaussianMixtureSampler(3, fit_seed=1, temperature=t) for t in (1.0, 0.5))
    full.mixture = half.mixture = fitted.mixture  # the fit does not depend on the temperature: fitted once
    assert torch.equal(full.latents(model, labels, seed=5), fitted.latents(model, labels, seed=5))
    implied_means = 2 * half.latents(model, labels, seed=5).double() - full.latents(model, labels, seed=5).double()
    distance = (implied_means[:, None, :] - fitted.mixture["means"][labels]).norm(dim=2).min(dim=1).values
    assert distance.max() < 1e-5, "a draw left the line from its component's mean"
    # and not a mean of another digit's components: the draws of 0s and 1s differ
    zeros_against_ones = (implied_means[:100, None, :] - fitted.mixture["means"][1][None]).norm(dim=2)
    assert zeros_against_ones.min() > 1e-3


def test_the_fit_is_saved_beside_the_checkpoint_and_reused_only_when_it_matches(model, train_slice, tmp_path, capsys):
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"checkpoint one")
    sampler = GaussianMixtureSampler(components=2).fit_for_checkpoint(model, *train_slice, ckpt)
    path = tmp_path / "best.ckpt.gmm2_full_seed0.pt"
    assert path.is_file() and "saved" in capsys.readouterr().out

    reused = GaussianMixtureSampler(components=2)
    reused.fit = None  # a refit would fail
    reused.fit_for_checkpoint(model, *train_slice, ckpt)
    assert "reusing" in capsys.readouterr().out
    assert torch.equal(reused.mixture["means"], sampler.mixture["means"])

    ckpt.write_bytes(b"checkpoint two")  # e.g. last.ckpt, overwritten by more training
    GaussianMixtureSampler(components=2).fit_for_checkpoint(MLP(latent_dim=3), *train_slice, ckpt)
    assert "refitting" in capsys.readouterr().out
    assert not torch.equal(torch.load(path, weights_only=True)["mixture"]["means"], sampler.mixture["means"])
    assert (tmp_path / "best.ckpt.gmm3_diag_seed0.pt").exists() is False, "other settings get a file of their own"


def test_prior_sampler_draws_from_the_learned_prior():
    model = MLP(latent_dim=2, learned_prior=True)
    with torch.no_grad():
        model.prior_mu[3] = torch.tensor([4.0, -2.0])
        model.prior_logvar[3] = torch.tensor([0.0, 2 * torch.log(torch.tensor(0.5))])
    z = PriorSampler().latents(model, torch.full((50_000,), 3), seed=0)
    torch.testing.assert_close(z.mean(0), torch.tensor([4.0, -2.0]), atol=0.02, rtol=0)
    torch.testing.assert_close(z.std(0), torch.tensor([1.0, 0.5]), atol=0.02, rtol=0)
    cooler = PriorSampler(temperature=0.5).latents(model, torch.full((50_000,), 3), seed=0)
    torch.testing.assert_close(cooler.mean(0), torch.tensor([4.0, -2.0]), atol=0.01, rtol=0)
    torch.testing.assert_close(cooler.std(0), torch.tensor([0.5, 0.25]), atol=0.01, rtol=0)
    grid, cooler_grid = (PriorSampler(temperature=t).grid_latents(model, 10) for t in (1.0, 0.5))
    mean = model.prior_mu.detach()[torch.arange(10).repeat_interleave(10)]
    torch.testing.assert_close(cooler_grid - mean, 0.5 * (grid - mean))


def test_evaluate_draws_every_sample_from_the_chosen_sampler(trained_run, data_dir, tmp_path):
    from cvae.run.evaluate import evaluate

    ckpt = tmp_path / "model.ckpt"  # a copy: the fit made below lands beside it, not in the shared run
    shutil.copy(trained_run[0] / "checkpoints" / "best.ckpt", ckpt)
    settings = ["sampler=gmm", "sampler.components=2", "sampler.covariance=diag", "sampler.temperature=0.7"]
    overrides = [f"ckpt_path={ckpt}", f"data.data_dir={data_dir}", *QUICK_EVALUATION, *settings, "digit=4"]
    (tmp_path / "gmm").mkdir()
    evaluate(compose_config("evaluate", [*overrides, "trainer.limit_test_batches=1"], tmp_path / "gmm"))

    assert not (tmp_path / "model.ckpt.gmm2_diag_seed0.pt").exists(), "evaluate wrote outside its run dir"
    model = load_module(ckpt).net
    sampler = GaussianMixtureSampler(components=2, covariance="diag", temperature=0.7)
    sampler.fit_for_checkpoint(model, *mnist("train", data_dir), ckpt)  # the fit evaluate made, made again
    # drawn for people (for_people: tests/test_first_hour.py checks it against np.kron): 4x, a digit label per row
    samples = for_people(digit_rows(model, sampler.grid_latents(model, 10, seed=42)), [str(d) for d in range(10)])
    save_image(samples, tmp_path / "expected.png")
    assert (tmp_path / "gmm" / "samples.png").read_bytes() == (tmp_path / "expected.png").read_bytes()
    digit = decode(model, torch.full((8,), 4), sampler.latents(model, torch.full((8,), 4), seed=42))
    save_image(for_people(image_grid(digit), ["4"]), tmp_path / "expected_4.png")
    assert (tmp_path / "gmm" / "digit_4.png").read_bytes() == (tmp_path / "expected_4.png").read_bytes()


def callback_run(net, data_dir, train_slice, sampler):
    """A GenerationQuality callback set up for fit (1 epoch of 1) on the real validation images, with what it logs
    and the trainer and module it is called with."""
    datamodule = MNISTDataModule(data_dir=data_dir, eval_batch_size=500)
    datamodule.setup()
    datamodule.splits["train"] = train_slice
    callback = GenerationQuality(every_n_epochs=1, num_samples=200, seed=3, sampler=sampler)
    logged = {}
    pl_module = SimpleNamespace(
        net=net, device=torch.device("cpu"), log=lambda name, value: logged.update({name: value})
    )
    trainer = SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn="fit"),
        current_epoch=0,
        max_epochs=1,
        datamodule=datamodule,
        global_rank=0,
        world_size=1,
    )
    callback.setup(trainer, pl_module, "fit")
    return callback, logged, trainer, pl_module


def test_generation_quality_callback_measures_the_chosen_sampler(model, data_dir, train_slice):
    callback, logged, trainer, pl_module = callback_run(model, data_dir, train_slice, GaussianMixtureSampler(2))
    callback.on_validation_epoch_end(trainer, pl_module)
    datamodule = trainer.datamodule

    expected_sampler = GaussianMixtureSampler(2).fit(model, *train_slice)
    metrics = conditional_generation_metrics("mnist", None)
    for x, y in datamodule.val_dataloader():
        metrics.update(x, y, real=True)
    labels = balanced_labels(200)
    metrics.update(
        decode(model, labels, expected_sampler.latents(model, labels, seed=3), batch_size=2000), labels, real=False
    )
    expected = metrics.compute()
    assert logged["val/fid"] == pytest.approx(expected["fid"], rel=1e-6)
    assert logged["val/label_acc"] == expected["label_acc"]


class CountingSampler(PriorSampler):
    def __init__(self):
        super().__init__()
        self.draws = 0

    def latents(self, net, labels, seed):
        self.draws += 1
        return super().latents(net, labels, seed)


def test_the_pass_over_the_best_checkpoint_repeats_no_generation_of_the_same_weights(data_dir, train_slice):
    """train.py validates the best checkpoint after fit: when its weights are those the last epoch measured, the
    callback logs that epoch's figures without generating again; other weights are measured afresh."""
    torch.manual_seed(0)
    net = MLP(latent_dim=3).eval()
    sampler = CountingSampler()
    callback, logged, trainer, pl_module = callback_run(net, data_dir, train_slice, sampler)
    callback.on_validation_epoch_end(trainer, pl_module)
    last_epoch = dict(logged)
    trainer.state.fn = "validate"
    logged.clear()
    callback.on_validation_epoch_end(trainer, pl_module)
    assert sampler.draws == 1 and logged == last_epoch
    with torch.no_grad():
        net.decoder[-1].bias.add_(0.5)  # other weights: the best checkpoint is an earlier epoch's
    callback.on_validation_epoch_end(trainer, pl_module)
    fresh, fresh_logged, fresh_trainer, fresh_module = callback_run(net, data_dir, train_slice, PriorSampler())
    fresh.on_validation_epoch_end(fresh_trainer, fresh_module)
    assert sampler.draws == 2 and logged == fresh_logged and logged["val/fid"] != last_epoch["val/fid"]


def test_the_sampler_group_reaches_evaluate_and_the_callback(tmp_path):
    from cvae.trust import instantiate

    train_cfg = compose_config("train", ["sampler=gmm", "sampler.components=4"], tmp_path)
    callback = instantiate(train_cfg.callbacks.generation_quality)
    assert isinstance(callback.sampler, GaussianMixtureSampler) and callback.sampler.components == 4
    assert isinstance(
        instantiate(compose_config("train", [], tmp_path).callbacks.generation_quality).sampler, PriorSampler
    )
    evaluate_cfg = compose_config("evaluate", ["ckpt_path=x", "sampler=gmm", "sampler.covariance=diag"], tmp_path)
    assert instantiate(evaluate_cfg.sampler).covariance == "diag"
