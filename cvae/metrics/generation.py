"""How good a conditional generator is: FID (torchmetrics) on features of the reference MNIST classifier or of
InceptionV3, label accuracy of generated digits, the importance-weighted NLL and the classification accuracy score."""

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image.fid import FrechetInceptionDistance

from cvae.errors import ConfigError
from cvae.metrics import FEATURE_EXTRACTORS
from cvae.metrics.classifier import ReferenceClassifier, accuracy, fit_classifier, load_reference_classifier
from cvae.metrics.inception import standard_inception
from cvae.model.cvae import Net, importance_weighted_nll
from cvae.model.network import NUM_CLASSES
from cvae.sampling.prior import Sampler, generate
from cvae.validate import check_choice

FEATURE_CHUNK = 500  # images per feature-extractor call: small enough to stay in the CPU caches


class ClassifierFeatures(nn.Module):
    """Penultimate features of the reference MNIST classifier."""

    def __init__(self, classifier: ReferenceClassifier):
        super().__init__()
        self.classifier, self.num_features = classifier, classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


class InceptionFeatures(nn.Module):
    """The standard FID InceptionV3 (cvae/metrics/inception.py), fed grey digits as RGB bytes."""

    num_features = 2048

    def __init__(self, weights_path: str | None):
        super().__init__()
        self.inception = standard_inception(weights_path)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        rgb = images.reshape(-1, 1, 28, 28).expand(-1, 3, -1, -1)
        return self.inception((rgb * 255).round().to(torch.uint8)).reshape(len(images), -1)


def feature_fid(num_features: int) -> FrechetInceptionDistance:
    """FID over features we extract once and share between the overall and per-digit FIDs; real statistics
    survive reset(), so real images are read once."""
    precomputed = nn.Identity()
    precomputed.num_features = num_features  # what torchmetrics reads of a custom extractor
    return FrechetInceptionDistance(feature=precomputed, reset_real_features=False)


def in_chunks(network: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """network(images), a chunk at a time: the first conv layer's output for 10k digits would take a gigabyte."""
    return torch.cat([network(chunk) for chunk in images.split(FEATURE_CHUNK)])


class ConditionalGenerationMetrics(nn.Module):
    """FID and label accuracy, overall and per digit, of generated digits against real ones. Every state is a
    torchmetrics state, so under DDP compute() gathers every rank's samples."""

    def __init__(self, extractor: nn.Module, classifier: ReferenceClassifier):
        super().__init__()
        self.extractor, self.classifier = extractor, classifier
        self.fid = feature_fid(extractor.num_features)
        self.fid_per_digit = nn.ModuleList(feature_fid(extractor.num_features) for _ in range(NUM_CLASSES))
        self.label_acc = MulticlassAccuracy(NUM_CLASSES, average="micro")
        self.label_acc_per_digit = MulticlassAccuracy(NUM_CLASSES, average=None)

    @torch.no_grad()
    def update(self, images: torch.Tensor, labels: torch.Tensor, real: bool) -> None:
        features = in_chunks(self.extractor, images)
        self.fid.update(features, real=real)
        if not real:  # the reference classifier's own features need only its head on top
            shared = isinstance(self.extractor, ClassifierFeatures) and self.extractor.classifier is self.classifier
            logits = self.classifier.head(features) if shared else in_chunks(self.classifier, images)
            predictions = logits.argmax(dim=1)
            self.label_acc.update(predictions, labels)
            self.label_acc_per_digit.update(predictions, labels)
        for digit, fid in enumerate(self.fid_per_digit):
            if (labels == digit).any():
                fid.update(features[labels == digit], real=real)

    def compute(self) -> dict[str, float]:
        metrics = {"fid": self.fid.compute().item(), "label_acc": self.label_acc.compute().item()}
        for digit, (fid, acc) in enumerate(zip(self.fid_per_digit, self.label_acc_per_digit.compute())):
            enough = min(fid.real_features_num_samples, fid.fake_features_num_samples) >= 2  # for a covariance
            metrics[f"fid_digit/{digit}"] = fid.compute().item() if enough else float("nan")
            metrics[f"label_acc_digit/{digit}"] = acc.item()
        return metrics

    def reset_generated(self) -> None:
        for metric in (self.fid, *self.fid_per_digit, self.label_acc, self.label_acc_per_digit):
            metric.reset()


def balanced_labels(num_samples: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """num_samples labels, the same count of each digit."""
    if num_samples <= 0 or num_samples % NUM_CLASSES:
        raise ConfigError(f"a class-balanced sample count must be a positive multiple of 10, got {num_samples}")
    return torch.arange(NUM_CLASSES, device=device).repeat_interleave(num_samples // NUM_CLASSES)


@torch.no_grad()
def mean_iw_nll(model: Net, images: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    """Mean over images of the k-sample importance-weighted bound on -log p(x | y), in nats."""
    batches = zip(images.split(500), labels.split(500))
    return sum(importance_weighted_nll(model, x, y, k).sum().item() for x, y in batches) / len(labels)


def classification_accuracy_score(
    model: Net,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    per_digit: int,
    epochs: int,
    seed: int,
    sampler: Sampler | None = None,
) -> float:
    """CAS (Ravuri & Vinyals, 2019): train the reference architecture on generated digits only, test on real ones."""
    labels = balanced_labels(per_digit * NUM_CLASSES, test_images.device)
    synthetic = generate(model, labels, seed, sampler, batch_size=2000)
    classifier = fit_classifier(synthetic, labels, epochs=epochs, seed=seed)
    return accuracy(classifier, test_images.view(-1, 1, 28, 28), test_labels)


def conditional_generation_metrics(features: str, inception_weights: str | None) -> ConditionalGenerationMetrics:
    classifier = load_reference_classifier()
    if check_choice(features, FEATURE_EXTRACTORS, "quality.features") == "mnist":
        return ConditionalGenerationMetrics(ClassifierFeatures(classifier), classifier)
    return ConditionalGenerationMetrics(InceptionFeatures(inception_weights), classifier)


def generator_report(
    model: Net,
    test_images: torch.Tensor,
    test_labels: torch.Tensor,
    *,
    num_samples: int,
    features: str,
    inception_weights: str | None,
    iw_samples: int,
    seed: int,
    cas_per_digit: int = 0,
    cas_epochs: int = 3,
    sampler: Sampler | None = None,
) -> dict[str, float]:
    """The test-set figures of evaluate.py beyond the ELBO: nll_iw, FID and label accuracy (overall and per
    digit) of class-balanced samples (z from the sampler, by default the prior) against the real test images,
    and CAS when cas_per_digit > 0."""
    device = test_images.device
    metrics = conditional_generation_metrics(features, inception_weights).to(device)
    for x, y in zip(test_images.split(2000), test_labels.split(2000)):
        metrics.update(x, y, real=True)
    labels = balanced_labels(num_samples, device)
    metrics.update(generate(model, labels, seed, sampler), labels, real=False)
    report = {f"test/{name}": value for name, value in metrics.compute().items()}
    report["test/nll_iw"] = mean_iw_nll(model, test_images, test_labels, iw_samples)
    if cas_per_digit > 0:
        report["test/cas"] = classification_accuracy_score(
            model, test_images, test_labels, cas_per_digit, epochs=cas_epochs, seed=seed, sampler=sampler
        )
    return report
