"""Objects built from configs with Hydra's `instantiate`, allowed to name only the code this project trusts.

A config file is data (docs/trust.md): a `_target_` in it may name a class of a trusted package, or a factory
named here in full, never a function, a method or a loader (`pytorch_lightning.LightningModule.load_from_checkpoint`
would unpickle a file). The entry points give Hydra its own, exact list (HYDRA_TARGETS) for what it builds itself:
its callbacks, launchers, sweepers and logging handlers. Your own classes, e.g.
`+callbacks.mine._target_=mypkg.MyCallback`, are trusted by naming them in the environment, which a config cannot
change: `export CVAE_TRUSTED_TARGETS=mypkg.*` (comma-separated patterns ending in `.*`, each trusting that
package's classes, or full names, each trusting that one callable)."""

import importlib.util
import inspect
import os

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from cvae.errors import ConfigError

# packages whose classes conf/ names: this package, Lightning's trainer, callbacks, loggers and profilers,
# torch's optimizers and schedulers
TRUSTED_PACKAGES = (
    *("cvae.*", "torch.optim.*"),
    *(
        f"{lightning}.{part}.*"
        for lightning in ("pytorch_lightning", "lightning.pytorch")
        for part in ("callbacks", "loggers", "profilers")
    ),
)
TRUSTED_CLASSES = ("pytorch_lightning.Trainer", "lightning.pytorch.Trainer")
# functions that build an object, each trusted by its full name (conf/logger/)
FACTORIES = ("cvae.run.loggers.tensorboard_logger", "cvae.run.loggers.mlflow_logger", "cvae.run.loggers.wandb_logger")
USER_TARGETS = tuple(
    filter(None, (pattern.strip() for pattern in os.environ.get("CVAE_TRUSTED_TARGETS", "").split(",")))
)
TRUSTED_TARGETS = [*TRUSTED_PACKAGES, *TRUSTED_CLASSES, *FACTORIES, *USER_TARGETS]
# what Hydra builds itself (hydra.callbacks, hydra/launcher, hydra/sweeper and its sampler), by full name: Hydra
# cannot tell a class from a method, so no pattern here but the user's own
HYDRA_TARGETS = [
    *("cvae.run.resolvers.Resolvers", "cvae.run.sweep.SweepSummary", "cvae.run.cli.RunDirCheck"),
    *(f"hydra_plugins.hydra_submitit_launcher.submitit_launcher.{kind}" for kind in ("SlurmLauncher", "LocalLauncher")),
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper",
    *(f"optuna.samplers.{kind}" for kind in ("TPESampler", "RandomSampler", "GridSampler", "CmaEsSampler")),
    *USER_TARGETS,
]


def build(node: DictConfig, **kwargs):
    """instantiate(node), each of its `_target_`s checked by check_targets first."""
    check_targets(node)
    try:
        return instantiate(node, _execution_whitelist_=TRUSTED_TARGETS, **kwargs)
    except InstantiationException as error:
        if "execution whitelist" not in str(error):
            raise
        raise untrusted(str(error).splitlines()[0]) from None


def check_targets(node: DictConfig, imports: bool = True) -> None:
    """Every `_target_` in the node: a full name on TRUSTED_TARGETS (a factory), or a class of a trusted package
    (`imports=False`: by name only, without importing its package, as the entry points check before any work)."""

    def visit(value, key: str) -> None:
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for name, child in items:
            if name == "_target_":
                target = OmegaConf.select(node, f"{key}_target_") if "${" in str(child) else child
                check_target(str(target), f"{key}_target_", imports)
            else:
                visit(child, f"{key}{name}.")

    visit(OmegaConf.to_container(node, resolve=False), "")


def check_target(target: str, key: str, imports: bool = True) -> None:
    if target in TRUSTED_TARGETS:
        return  # named in full: a class, or a factory someone trusted by name
    prefixes = [pattern[:-1] for pattern in TRUSTED_TARGETS if pattern.endswith(".*")]
    if not any(target.startswith(prefix) for prefix in prefixes):
        raise untrusted(f"{key}={target} is not on the execution whitelist")
    package = target.partition(".")[0]
    if importlib.util.find_spec(package) is None:  # e.g. lightning.pytorch.* where only pytorch_lightning is
        raise ConfigError(
            f"{key}={target} needs the {package} package, which is not installed: install it, or name a class of "
            f"an installed package (pytorch_lightning.* for lightning.pytorch.*)"
        )
    if not imports:
        return
    try:
        resolved = get_object(target)  # imports a module of a trusted package only
    except Exception:
        return  # nothing to run: instantiate says what it cannot find
    if not inspect.isclass(resolved):
        raise untrusted(f"{key}={target} is not a class: a config may name a trusted package's classes, no function")


def untrusted(what: str) -> ConfigError:
    return ConfigError(
        f"{what} (trusted: classes of {', '.join(TRUSTED_PACKAGES)}; {', '.join(TRUSTED_CLASSES + FACTORIES)}); to "
        f"use your own code, export CVAE_TRUSTED_TARGETS=<package>.* (docs/trust.md)"
    )


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
