"""Checkpoints of every network and option rebuild the model they hold from the `net` config they record, a resume
with another network is refused, and checkpoints written before networks were injected (mlp and conv by name,
parameters under `model.`) still load, as the same model."""

import pytest
import torch
from omegaconf import OmegaConf

from cvae.errors import CheckpointError
from cvae.model.cvae import sample
from cvae.model.module import CVAELitModule
from cvae.run.build import build_module
from cvae.run.checkpoints import load_module
from cvae.run.resume import check_resumable

CONV_LEARNED = {"_target_": "cvae.model.conv.Conv", "latent_dim": 3, "hidden_dims": [16], "channels": [4, 8]}
CONV_LEARNED["learned_prior"] = True


def conv_module() -> CVAELitModule:
    torch.manual_seed(0)
    return build_module(OmegaConf.create({"_target_": "cvae.model.module.CVAELitModule", "net": CONV_LEARNED}))


def save(module: CVAELitModule, path, hyper_parameters: dict | None = None, state_dict: dict | None = None):
    hyper_parameters = dict(module.hparams) if hyper_parameters is None else hyper_parameters
    state_dict = module.state_dict() if state_dict is None else state_dict
    torch.save({"state_dict": state_dict, "hyper_parameters": hyper_parameters}, path)
    return path


def test_a_conv_learned_prior_checkpoint_rebuilds_the_same_model(tmp_path):
    module = conv_module()
    loaded = load_module(save(module, tmp_path / "conv.ckpt"))
    z, y = torch.randn(5, 3), torch.arange(5)
    assert type(loaded.net).__name__ == "Conv" and loaded.hparams["net"] == CONV_LEARNED
    assert torch.equal(sample(loaded.net, y, z), sample(module.net, y, z))
    assert torch.equal(loaded.net.prior_mu, module.net.prior_mu)


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_a_checkpoint_from_before_net_configs_loads_as_the_same_model(tmp_path, architecture):
    """The hyperparameters and parameter names fea1b2c wrote: the network by name, its weights under `model.`."""
    module = (
        conv_module()
        if architecture == "conv"
        else build_module(
            OmegaConf.create(
                {
                    "_target_": "cvae.model.module.CVAELitModule",
                    "net": {"_target_": "cvae.model.mlp.MLP", "latent_dim": 3, "hidden_dims": [512, 256]},
                }
            )
        )
    )
    net = dict(module.hparams["net"])
    old_hparams = {key: value for key, value in net.items() if key != "_target_"} | {"beta": 1.0, "eval_seed": 0}
    old_hparams = {"architecture": architecture, "hidden_dims": [512, 256], **old_hparams}
    old_weights = {key.replace("net.", "model.", 1): value for key, value in module.state_dict().items()}
    old = save(module, tmp_path / "old.ckpt", old_hparams, old_weights)
    loaded = load_module(old)
    z, y = torch.randn(5, 3), torch.arange(5)
    assert torch.equal(sample(loaded.net, y, z), sample(module.net, y, z))
    check_resumable(old, OmegaConf.create({"model": {"net": net}}))


@pytest.mark.parametrize(
    ("asked", "saved_text", "asked_text"),
    [
        ({"_target_": "cvae.model.mlp.MLP", "hidden_dims": [16]}, "_target_=cvae.model.conv.Conv", "mlp.MLP"),
        ({"learned_prior": False}, "learned_prior=True", "learned_prior=False"),
        ({"channels": [8, 8]}, "channels=[4, 8]", "channels=[8, 8]"),
    ],
)
def test_resuming_with_another_network_is_refused(tmp_path, asked, saved_text, asked_text):
    ckpt = save(conv_module(), tmp_path / "conv.ckpt")
    with pytest.raises(CheckpointError) as error:
        check_resumable(ckpt, OmegaConf.create({"model": {"net": {**CONV_LEARNED, **asked}}}))
    message = str(error.value).split("but the config asks for")
    assert saved_text in message[0] and asked_text in message[1]
