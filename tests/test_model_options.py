"""Checkpoints of every network and option rebuild the model they hold from the `net` config they record, a resume
with another network is refused, and a checkpoint's network config is plain values naming a network class."""

import re

import pytest
import torch
from omegaconf import OmegaConf

from cvae.errors import CheckpointError
from cvae.model.checkpoint import build_module, load_module
from cvae.model.cvae import sample
from cvae.model.module import CVAELitModule
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


@pytest.mark.parametrize(
    ("net", "said"),
    [
        # a resolver would build the target it names when the config is resolved: never resolved, refused
        (
            {"latent_dim": "${oc.create:{_target_: cvae.files.write_json_atomic, path: PLANTED, data: {}}}"},
            "holds an interpolation",
        ),
        ({"_target_": "${oc.env:HOME}"}, "holds an interpolation"),
        # a class of the project that is no network, a function of the project, a loader of a trusted package
        ({"_target_": "cvae.loggers.trackers.MLFlowLogger", "experiment_name": "x"}, "is not a network"),
        ({"_target_": "cvae.files.write_json_atomic"}, "is not a class"),
        ({"_target_": "pytorch_lightning.LightningModule.load_from_checkpoint"}, "is not on the execution whitelist"),
        ({"extra": [0] * 20_000}, "is larger than 10,000 entries"),
    ],
)
def test_a_checkpoint_network_config_is_plain_values_naming_a_network_class(tmp_path, net, said):
    module = conv_module()
    planted = tmp_path / "planted.json"
    net = {
        key: value.replace("PLANTED", str(planted)) if isinstance(value, str) else value for key, value in net.items()
    }
    hparams = {**dict(module.hparams), "net": {**CONV_LEARNED, **net}}
    with pytest.raises(CheckpointError, match=re.escape(said)):
        load_module(save(module, tmp_path / "crafted.ckpt", hparams))
    assert not planted.exists(), "the resolver ran"


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
