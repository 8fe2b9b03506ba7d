"""Objects built from configs with Hydra's `instantiate`, allowed to name only the code this project trusts.

Hydra 1.4 warns (1.5: refuses) when a config's `_target_` is instantiated without a whitelist from trusted Python
code: a config, or a command-line override, could otherwise call any function. The entry points give the same
list to `hydra.main` for what Hydra builds itself (its callbacks, launchers, sweepers). Your own classes, e.g.
`+callbacks.mine._target_=mypkg.MyCallback`, are trusted by naming them in the environment, which a config cannot
change: `export CVAE_TRUSTED_TARGETS=mypkg.*` (comma-separated patterns ending in `.*`, or full names)."""

import os

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from cvae.errors import ConfigError

# what conf/ names: this package, Lightning (trainer, callbacks, loggers, profilers), torch's optimizers, Hydra's
# plugins; and whatever the user's environment adds
TRUSTED_TARGETS = [
    *("cvae.*", "pytorch_lightning.*", "lightning.*", "torch.optim.*", "hydra_plugins.*"),
    *filter(None, (pattern.strip() for pattern in os.environ.get("CVAE_TRUSTED_TARGETS", "").split(","))),
]


def build(node: DictConfig, **kwargs):
    """instantiate(node), its `_target_`s checked against TRUSTED_TARGETS."""
    try:
        return instantiate(node, _execution_whitelist_=TRUSTED_TARGETS, **kwargs)
    except InstantiationException as error:
        if "execution whitelist" not in str(error):
            raise
        raise ConfigError(
            f"{str(error).splitlines()[0]} (trusted: {', '.join(TRUSTED_TARGETS)}); to use your own code, "
            f"export CVAE_TRUSTED_TARGETS=<package>.*"
        ) from None


def build_group(group: DictConfig | None) -> list:
    """Objects of a config group whose entries each hold a `_target_` (callbacks, loggers)."""
    if not group:
        return []
    return [build(entry) for entry in group.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def build_module(model: DictConfig):
    """The LightningModule of a model config, its network built from `model.net` and that config kept in its
    hyperparameters, so that every checkpoint rebuilds the network it holds (cvae.run.checkpoints.load_module)."""
    module = build(model)
    module.hparams["net"] = OmegaConf.to_container(model.net, resolve=True)
    return module
