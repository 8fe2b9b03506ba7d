"""Checkpoint files as data only (docs/trust.md): read with torch.load(weights_only=True), their recorded network
config plain values naming a network class, built on torch's meta device before anything is allocated, and written
atomically. Whether a launch may resume a checkpoint is cvae/run/resume.py's concern."""

import os
import pickle
import re
import zipfile
from pathlib import Path

import torch
from hydra.utils import get_object
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.io import TorchCheckpointIO

from cvae.errors import CheckpointError, ConfigError
from cvae.files import atomic_path
from cvae.model.module import CVAELitModule
from cvae.trust import check_target, instantiate, plain

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
# Lightning's ModelCheckpoint state: the files it names, which it deletes when a better epoch replaces them
CHECKPOINT_STATE_FILES = ("best_model_path", "kth_best_model_path", "last_model_path")
# The module's hyperparameters in a checkpoint: `net`, the network's config (_target_ and arguments), and the
# objective's knobs. The optimizer and scheduler are no part of it: they do not change what the weights mean.
MODULE_HPARAMS = ("net", "beta", "kl_warmup_epochs", "free_bits", "compile", "eval_seed")
# Far above any model of this project (the reference MLP has about a million): a checkpoint asking for more is
# refused before anything is allocated (hidden_dims=[2000000000] would ask for terabytes)
MAX_PARAMETERS = 2**30


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, read as tensors and plain values only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass ckpt_path=<run dir>/checkpoints/best.ckpt")
    with open(path, "rb") as file:
        if file.read(4) != ZIP_MAGIC:
            raise CheckpointError(f"{path} is not a cvae checkpoint: it is not in torch's checkpoint format")
    damage = archive_damage(path)
    if damage:
        raise CheckpointError(f"{path} is truncated or corrupted ({damage})")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch names the part it could not read, or the object it refused
        refused = re.search(r"GLOBAL (\S+)|Unsupported global|Unsupported class", str(error))
        if refused is None or not isinstance(error, pickle.UnpicklingError):  # damaged bytes: broken, not dangerous
            raise CheckpointError(f"{path} is truncated or corrupted ({first_sentence(error)})") from None
        detail = f" (it refers to {refused.group(1)})" if refused.group(1) else ""
        raise CheckpointError(
            f"{path} is not a cvae checkpoint: it holds objects beyond tensors and plain values{detail}, which are "
            f"never unpickled because that could run code"
        ) from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise CheckpointError(f"{path} is not a cvae checkpoint: it lacks 'state_dict' and 'hyper_parameters'")
    checkpoint["hyper_parameters"] = check_hyperparameters(checkpoint["hyper_parameters"], path)
    check_callback_files(checkpoint, path)
    return checkpoint


def archive_damage(path: Path) -> str | None:
    """What is broken in the zip archive: a part whose bytes fail their CRC-32 (torch.load does not check them,
    so a flipped byte in the weights would load as other weights) or an incomplete archive; None if whole."""
    try:
        with zipfile.ZipFile(path) as archive:
            size = path.stat().st_size
            inflated = next((part for part in archive.infolist() if part.file_size > size), None)
            if inflated is not None:  # torch stores its parts uncompressed: this one would inflate, maybe to GBs
                return f"{inflated.filename} declares {inflated.file_size:,} bytes, more than the whole file"
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"not a complete archive: {first_sentence(error)}"
    return f"{damaged} fails its checksum" if damaged else None


def check_callback_files(checkpoint: dict, path: Path) -> None:
    """The files a ModelCheckpoint state names lie in its own checkpoints dir: Lightning restores the state on a
    resume into that dir and deletes the files it names as better epochs replace them, so a crafted `../` path
    would delete a file outside the run."""
    states = checkpoint.get("callbacks") or {}
    for state in states.values() if isinstance(states, dict) else ():
        if not isinstance(state, dict) or "dirpath" not in state:
            continue
        dirpath = os.path.normpath(str(state["dirpath"]))
        named = [*(state.get(key) for key in CHECKPOINT_STATE_FILES), *(state.get("best_k_models") or {})]
        outside = [str(file) for file in named if file and os.path.dirname(os.path.normpath(str(file))) != dirpath]
        if outside:
            raise CheckpointError(
                f"{path} is not a checkpoint of a cvae run: its ModelCheckpoint state names {outside[0]}, outside its "
                f"checkpoints dir {dirpath}"
            )


def first_sentence(error: Exception) -> str:
    return str(error).split(". ")[0].splitlines()[0].strip() if str(error).strip() else type(error).__name__


def check_hyperparameters(hparams, path: Path) -> dict:
    """The knobs and network config a checkpoint records, before anything is built from them: plain values, only the
    knobs CVAELitModule takes, a network class, and the module built on torch's meta device, which checks the rest."""
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path} is not a cvae checkpoint: its hyper_parameters are no mapping")
    unknown = sorted(set(map(str, hparams)) - set(MODULE_HPARAMS))
    if unknown or not isinstance(hparams.get("net"), dict):
        what = f"hyperparameters this version of cvae does not know ({', '.join(unknown)})" if unknown else "no net"
        raise CheckpointError(f"{path} holds {what}; it was written by another program or version")
    try:
        plain(hparams, "the checkpoint's hyper_parameters")
        target = check_target(str(hparams["net"].get("_target_")), "net._target_")
        network = get_object(target)
        if not (issubclass(network, torch.nn.Module) and hasattr(network, "encode") and hasattr(network, "decode")):
            raise ConfigError(f"net._target_={target} is not a network (an nn.Module with encode and decode)")
        with torch.device("meta"):
            net = check_size(build_net(hparams["net"]), "net")
            CVAELitModule(net=net, **{key: value for key, value in hparams.items() if key != "net"})
    except ConfigError as error:
        raise CheckpointError(f"{path} holds a bad hyperparameter: {error}") from None
    except Exception as error:  # arguments the network does not take
        raise CheckpointError(f"{path} holds hyperparameters that build no network ({first_sentence(error)})") from None
    return hparams


def check_size(net: torch.nn.Module, key: str) -> torch.nn.Module:
    parameters = sum(parameter.numel() for parameter in net.parameters())
    if parameters > MAX_PARAMETERS:
        raise ConfigError(
            f"{key} describes a model of about {parameters:.2g} parameters ({4 * parameters / 1e9:.3g} GB), beyond "
            f"the {MAX_PARAMETERS:.2g} this project allows; choose smaller widths"
        )
    return net


def build_net(net: dict | DictConfig) -> torch.nn.Module:
    """The network of a `net` config, a checkpoint's or a run's, through the trusted instantiate."""
    return instantiate(OmegaConf.create(net) if isinstance(net, dict) else net, _convert_="all")


def build_module(model: DictConfig) -> CVAELitModule:
    """The LightningModule of a model config, its size checked first on torch's meta device, its network's config
    kept (resolved) in its hyperparameters, so that every checkpoint rebuilds the network it holds."""
    with torch.device("meta"):
        check_size(build_net(model.net), "model.net")
    module = instantiate(model)
    module.hparams["net"] = OmegaConf.to_container(model.net, resolve=True)
    return module


def load_module(path: str | Path) -> CVAELitModule:
    """The CVAELitModule a checkpoint describes: its `net` config rebuilds the network, then its weights load."""
    checkpoint = read_checkpoint(path)
    hparams = dict(checkpoint["hyper_parameters"])
    module = CVAELitModule(net=build_net(hparams["net"]), **{key: hparams[key] for key in hparams if key != "net"})
    module.hparams["net"] = hparams["net"]  # as in training (build_module): a re-save reloads
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not match the model its hyperparameters describe ({error})") from None
    return module.eval()


class AtomicCheckpointIO(TorchCheckpointIO):
    """A run killed while saving leaves the previous checkpoint intact, never a truncated one under its name."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_path(path) as temporary:
            super().save_checkpoint(checkpoint, temporary, storage_options)
