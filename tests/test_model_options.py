"""Checkpoints of every model option rebuild the model they hold, a resume with another option is refused, and
checkpoints from before the options existed still load as the reference MLP."""

import pytest
import torch
from omegaconf import OmegaConf

from cvae.errors import CheckpointError
from cvae.model.module import CVAELitModule
from cvae.run.checkpoints import check_resumable, load_module

CONV_LEARNED = {"latent_dim": 3, "hidden_dims": [16], "architecture": "conv", "channels": [4, 8], "learned_prior": True}


def save(module: CVAELitModule, path, hyper_parameters: dict | None = None):
    hyper_parameters = dict(module.hparams) if hyper_parameters is None else hyper_parameters
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hyper_parameters}, path)
    return path


def test_a_conv_learned_prior_checkpoint_rebuilds_the_same_model(tmp_path):
    torch.manual_seed(0)
    module = CVAELitModule(**CONV_LEARNED)
    loaded = load_module(save(module, tmp_path / "conv.ckpt"))
    z, y = torch.randn(5, 3), torch.arange(5)
    assert torch.equal(loaded.model.sample(y, z), module.model.sample(y, z))
    assert torch.equal(loaded.model.prior_mu, module.model.prior_mu)


def test_a_checkpoint_from_before_the_model_options_loads_as_the_reference_mlp(tmp_path):
    module = CVAELitModule(latent_dim=3)
    old_style = save(module, tmp_path / "old.ckpt", {"latent_dim": 3, "hidden_dims": [512, 256]})
    loaded = load_module(old_style)
    assert not loaded.model.learned_prior and isinstance(loaded.model.encoder, torch.nn.Sequential)
    model = {"latent_dim": 3, "hidden_dims": [512, 256], "architecture": "mlp"}
    check_resumable(old_style, OmegaConf.create({"model": model}))


@pytest.mark.parametrize(
    ("asked", "saved_text", "asked_text"),
    [
        ({"architecture": "mlp", "hidden_dims": [16]}, "architecture=conv", "architecture=mlp"),
        ({"learned_prior": False}, "learned_prior=True", "learned_prior=False"),
        ({"channels": [8, 8]}, "channels=[4, 8]", "channels=[8, 8]"),
    ],
)
def test_resuming_with_another_model_option_is_refused(tmp_path, asked, saved_text, asked_text):
    ckpt = save(CVAELitModule(**CONV_LEARNED), tmp_path / "conv.ckpt")
    with pytest.raises(CheckpointError) as error:
        check_resumable(ckpt, OmegaConf.create({"model": {**CONV_LEARNED, **asked}}))
    message = str(error.value).split("but the config asks for")
    assert saved_text in message[0] and asked_text in message[1]
