"""Checkpoint files as data only (the trust boundary's second rule, cvae/trust.py, where a checkpoint is parsed):
torch.load(weights_only=True) never runs code from the file; its recorded network config must be plain values whose
`_target_` is a network class, built on torch's meta device before anything is allocated; and checkpoint writes are
never seen half-done. Whether a launch may resume a checkpoint is cvae/run/resume.py's concern."""

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
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)|Unsupported global|Unsupported class", str(error))
        if refused is None:  # damaged bytes, not a refused object: the file is broken, not dangerous
            raise CheckpointError(f"{path} is truncated or corrupted ({first_sentence(error)})") from None
        detail = f" (it refers to {refused.group(1)})" if refused.group(1) else ""
        raise CheckpointError(
            f"{path} is not a cvae checkpoint: it holds objects beyond tensors and plain values{detail}, which are "
            f"never unpickled because that could run code"
        ) from None
    except Exception as error:  # truncated or corrupted: torch names the part it could not read
        raise CheckpointError(f"{path} is truncated or corrupted ({first_sentence(error)})") from None
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
    """The module's knobs and the network's config a checkpoint records, before anything is built from them: plain
    values (cvae.trust.plain: no interpolation, bounded), only the knobs CVAELitModule takes, a `_target_` that is
    a network class, and the network built on torch's meta device (every shape, no memory) within MAX_PARAMETERS.
    The module and the network check their own arguments in their constructors."""
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path} is not a cvae checkpoint: its hyper_parameters are no mapping")
    unknown = sorted(set(map(str, hparams)) - set(MODULE_HPARAMS))
    if unknown or not isinstance(hparams.get("net"), dict):
        what = f"hyperparameters this version of cvae does not know ({', '.join(unknown)})" if unknown else "no net"
        raise CheckpointError(f"{path} holds {what}; it was written by another program or version")
    try:
        plain(hparams, "the checkpoint's hyper_parameters")
        network_class(str(hparams["net"].get("_target_")))
        with torch.device("meta"):
            net = check_size(build_net(hparams["net"]), "net")
            CVAELitModule(net=net, **{key: value for key, value in hparams.items() if key != "net"})
    except ConfigError as error:
        raise CheckpointError(f"{path} holds a bad hyperparameter: {error}") from None
    except Exception as error:  # arguments the network does not take
        raise CheckpointError(f"{path} holds hyperparameters that build no network ({first_sentence(error)})") from None
    return hparams


def check_size(net: torch.nn.Module, key: str) -> torch.nn.Module:
    """A network within MAX_PARAMETERS (built on torch's meta device: every shape, no memory)."""
    parameters = sum(parameter.numel() for parameter in net.parameters())
    if parameters > MAX_PARAMETERS:
        raise ConfigError(
            f"{key} describes a model of about {parameters:.2g} parameters ({4 * parameters / 1e9:.3g} GB), beyond "
            f"the {MAX_PARAMETERS:.2g} this project allows; choose smaller widths"
        )
    return net


def network_class(target: str) -> type:
    """A trusted class (cvae.trust.check_target) that is a network: an nn.Module with encode and decode."""
    check_target(target, "net._target_")
    cls = get_object(target)
    if not (issubclass(cls, torch.nn.Module) and hasattr(cls, "encode") and hasattr(cls, "decode")):
        raise ConfigError(f"net._target_={target} is not a network (an nn.Module with encode and decode)")
    return cls


def build_net(net: dict | DictConfig) -> torch.nn.Module:
    """The network of a `net` config, a checkpoint's or a run's, through the trusted instantiate."""
    return instantiate(OmegaConf.create(net) if isinstance(net, dict) else net, _convert_="all")


def build_module(model: DictConfig) -> CVAELitModule:
    """The LightningModule of a model config, its network's config kept in its hyperparameters (resolved: plain
    values), so that every checkpoint rebuilds the network it holds (load_module). Its size is checked first, on
    torch's meta device: hidden_dims=[2000000000] would otherwise ask for terabytes."""
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
    """Writes each checkpoint to a temporary file beside it, then renames it into place: a run killed while
    saving leaves the previous checkpoint intact, never a truncated one under its name."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_path(path) as temporary:
            super().save_checkpoint(checkpoint, temporary, storage_options)
