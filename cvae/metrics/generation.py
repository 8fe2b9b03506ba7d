"""How good a conditional generator is: FID (torchmetrics) on features of the reference MNIST classifier or of
InceptionV3, label accuracy of generated digits, the importance-weighted NLL and the classification accuracy score."""

import hashlib
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchmetrics.image.fid import FrechetInceptionDistance

from cvae.errors import ConfigError, StorageError
from cvae.files import cache_dir, file_sha256, save_cache, shown
from cvae.metrics import FEATURE_EXTRACTORS, LABELS, RESIZES
from cvae.metrics.classifier import ReferenceClassifier, accuracy, fit_classifier, load_reference_classifier
from cvae.metrics.inception import standard_inception, weights_file
from cvae.model.cvae import Net, importance_weighted_nll, reconstruct
from cvae.model.network import NUM_CLASSES
from cvae.sampling.prior import Sampler, generate
from cvae.seeding import seeded_global_rng
from cvae.validate import check_choice, check_flag, check_folder

# images per feature-extractor call: the classifier's first activations of 100 digits (10 MB) stay in a CPU's last
# cache level, 500's (50 MB) did not (docs/speed.md)
FEATURE_CHUNK = 100
# images per Inception pass on a CPU: a 299 x 299 batch of 500 would hold gigabytes of activations
# (python -m benchmarks.inception, docs/evaluation.md)
INCEPTION_BATCH = 50
# bump when the Inception features change beyond float rounding: cached reference features of before are not used
REFERENCE_FORMAT = 1


class ClassifierFeatures(nn.Module):
    """Penultimate features of the reference MNIST classifier."""

    def __init__(self, classifier: ReferenceClassifier):
        super().__init__()
        self.classifier, self.num_features = classifier, classifier.num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(images)


class InceptionFeatures(nn.Module):
    """The standard FID InceptionV3 (cvae/metrics/inception.py), fed grey digits as RGB bytes, resized as `resize`
    says. Channels-last weights (every activation follows them) and inference mode, INCEPTION_BATCH images a pass:
    the features of the plain path to float rounding, faster on a CPU (python -m benchmarks.inception)."""

    num_features = 2048

    def __init__(self, weights_path: str | None, resize: str = "tf1", batch_size: int = INCEPTION_BATCH):
        super().__init__()
        self.resize = check_choice(resize, RESIZES, "quality.resize")
        path = weights_file(weights_path)
        self.inception = standard_inception(str(path), antialias=resize == "antialias")
        self.inception.to(memory_format=torch.channels_last)
        self.weights_sha256, self.batch_size = file_sha256(path), batch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        grey = (images.reshape(-1, 1, 28, 28) * 255).round().to(torch.uint8)
        with torch.inference_mode():
            features = torch.cat([self.inception(chunk.expand(-1, 3, -1, -1)) for chunk in grey.split(self.batch_size)])
        return features.clone()  # an ordinary tensor: an inference-mode one refuses autograd and in-place use later


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
    def update(
        self, images: torch.Tensor, labels: torch.Tensor, real: bool, features: torch.Tensor | None = None
    ) -> None:
        """`features`: the extractor's of these images, computed before (the cached reference's)."""
        features = in_chunks(self.extractor, images) if features is None else features
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


def frequency_labels(num_samples: int, train_labels: torch.Tensor) -> torch.Tensor:
    """num_samples labels sorted by digit, each digit's count its share of `train_labels` rounded by largest
    remainder: the expected counts of labels drawn with the training frequencies, without the draw's noise."""
    if num_samples <= 0 or train_labels.numel() == 0:
        raise ConfigError(f"labels at the training frequencies need a positive sample count, got {num_samples}")
    quota = torch.bincount(train_labels.cpu(), minlength=NUM_CLASSES).double() * num_samples / train_labels.numel()
    counts = quota.floor().long()
    remainder_order = torch.argsort(quota - counts, descending=True, stable=True)
    counts[remainder_order[: num_samples - counts.sum()]] += 1
    return torch.arange(NUM_CLASSES).repeat_interleave(counts).to(train_labels.device)


def sample_labels(
    kind: str, num_samples: int, train_labels: torch.Tensor | None, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """The labels to generate: balanced_labels, or frequency_labels of the training labels (quality.labels)."""
    if check_choice(kind, LABELS, "quality.labels") == "balanced":
        return balanced_labels(num_samples, device)
    if train_labels is None:
        raise ConfigError("quality.labels=train_frequencies needs the training labels; pass train_labels")
    return frequency_labels(num_samples, train_labels).to(device)


def min_max_stretch(images: torch.Tensor) -> torch.Tensor:
    """Each image mapped linearly onto [0, 1], its darkest pixel to 0 and its brightest to 1: Dai & Wipf's `norm=True`
    (docs/literature.md). A uniform image is left as it is."""
    flat = images.flatten(1)
    low, high = flat.amin(dim=1, keepdim=True), flat.amax(dim=1, keepdim=True)
    varies = high > low
    return torch.where(varies, (flat - low) / torch.where(varies, high - low, 1.0), flat).view_as(images)


def reconstruction_fid(extractor: nn.Module, real_features: torch.Tensor, reconstructions: torch.Tensor) -> float:
    """FID of the test images' reconstructions against the test images (their features given): Ghosh et al.'s REC,
    what the decoder draws when each z is an image's own code, so the sampler is out of the comparison."""
    fid = feature_fid(extractor.num_features)
    fid.update(real_features, real=True)
    fid.update(in_chunks(extractor, reconstructions), real=False)
    return fid.compute().item()


def reference_cache_folder(enabled: bool, folder: str | None, prefix: str) -> Path | None:
    """The folder reference features are cached in (cvae.files.cache_dir of `folder`), None when `enabled` is false:
    the one reading of `<prefix>.reference_cache` and `<prefix>.cache_dir`, for evaluate and the training callback."""
    check_flag(enabled, f"{prefix}.reference_cache")
    if folder is not None:
        check_folder(folder, f"{prefix}.cache_dir")
    return cache_dir(folder) if enabled else None


def reference_key(extractor: "InceptionFeatures", images: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of everything the reference features depend on: the images and labels as scored, the weights file,
    the resize and REFERENCE_FORMAT."""
    digest = hashlib.sha256(
        f"format {REFERENCE_FORMAT} resize {extractor.resize} weights {extractor.weights_sha256} "
        f"images {images.dtype} {tuple(images.shape)} labels {labels.dtype} {tuple(labels.shape)}".encode()
    )
    for tensor in (images, labels):
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def read_reference(path: Path, key: str, count: int, num_features: int) -> tuple[torch.Tensor | None, str]:
    """A cache file's features if it holds exactly what `key` names (tensors only, read with weights_only: nothing
    in it runs), else None and what is wrong with it."""
    if not path.is_file():
        return None, "not cached yet"
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile):
        return None, "is unreadable (truncated or corrupted)"
    expected_key = torch.frombuffer(bytearray.fromhex(key), dtype=torch.uint8)
    features = saved.get("features") if isinstance(saved, dict) else None
    stored_key = saved.get("key") if isinstance(saved, dict) else None
    if not (isinstance(stored_key, torch.Tensor) and torch.equal(stored_key, expected_key)):
        return None, "does not hold what its name says"
    if not (
        isinstance(features, torch.Tensor)
        and features.dtype == torch.float32
        and features.shape == (count, num_features)
        and torch.isfinite(features).all()
    ):
        return None, "holds features of another shape or non-finite ones"
    return features, ""


@torch.no_grad()
def reference_features(
    extractor: nn.Module, images: torch.Tensor, labels: torch.Tensor, cache: str | Path | None
) -> torch.Tensor:
    """The extractor's features of the reference images: Inception's from the cache folder when it holds them for
    exactly these images, labels, weights and resize (computed and saved there otherwise); None: computed."""
    if cache is None or not isinstance(extractor, InceptionFeatures):
        return in_chunks(extractor, images)
    key = reference_key(extractor, images, labels)
    path = Path(cache, f"inception_reference-{key}.pt")
    features, problem = read_reference(path, key, len(images), extractor.num_features)
    if features is not None:
        print(f"Inception reference features: reusing {shown(path)}")
        return features.to(images.device)
    print(f"Inception reference features: {shown(path)} {problem}; computing {len(images)}")
    features = in_chunks(extractor, images)
    key_bytes = torch.frombuffer(bytearray.fromhex(key), dtype=torch.uint8)
    try:
        save_cache(cache, path.name, {"key": key_bytes, "features": features.detach().float().cpu()})
    except StorageError as error:  # an unwritable cache: this evaluation goes on, computing them again next time
        print(f"Inception reference features: not cached: {error}")
    else:
        print(f"Inception reference features: saved {shown(path)}")
    return features


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


def conditional_generation_metrics(
    features: str, inception_weights: str | None, resize: str = "tf1"
) -> ConditionalGenerationMetrics:
    classifier = load_reference_classifier()
    if check_choice(features, FEATURE_EXTRACTORS, "quality.features") == "mnist":
        return ConditionalGenerationMetrics(ClassifierFeatures(classifier), classifier)
    return ConditionalGenerationMetrics(InceptionFeatures(inception_weights, resize), classifier)


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
    resize: str = "tf1",
    labels: str = "balanced",
    train_labels: torch.Tensor | None = None,
    cache: str | Path | None = None,
    stretch: bool = False,
    reconstructions: bool = False,
) -> dict[str, float]:
    """The test-set figures of evaluate.py beyond the ELBO: nll_iw, FID and label accuracy (overall and per
    digit) of generated digits (z from the sampler, by default the prior; `labels` as sample_labels says; each
    min-max stretched with `stretch`) against the real test images, CAS when cas_per_digit > 0, and with
    `reconstructions` the FID of the test images' reconstructions (fid_rec; stretched as the samples are). Inception's
    features of the test images come from the `cache` folder when it holds them (None: computed each time)."""
    device = test_images.device
    metrics = conditional_generation_metrics(features, inception_weights, resize).to(device)
    generated = sample_labels(labels, num_samples, train_labels, device)
    real_features = reference_features(metrics.extractor, test_images, test_labels, cache)
    for x, y, f in zip(test_images.split(2000), test_labels.split(2000), real_features.split(2000)):
        metrics.update(x, y, real=True, features=f)
    images = generate(model, generated, seed, sampler)
    metrics.update(min_max_stretch(images) if stretch else images, generated, real=False)
    report = {f"test/{name}": value for name, value in metrics.compute().items()}
    if reconstructions:
        rebuilt = reconstruct(model, test_images, test_labels)
        report["test/fid_rec"] = reconstruction_fid(
            metrics.extractor, real_features, min_max_stretch(rebuilt) if stretch else rebuilt
        )
    with seeded_global_rng(seed, device):  # its own stream: the same bound whatever the FID's network drew
        report["test/nll_iw"] = mean_iw_nll(model, test_images, test_labels, iw_samples)
    if cas_per_digit > 0:
        report["test/cas"] = classification_accuracy_score(
            model, test_images, test_labels, cas_per_digit, epochs=cas_epochs, seed=seed, sampler=sampler
        )
    return report
