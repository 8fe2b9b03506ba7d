"""Checkpoints as data only: torch.load(weights_only=True) never runs code from the file; checks that a file
is a cvae checkpoint of the model asked for; and checkpoint writes that are never seen half-done."""

import pickle
import re
from pathlib import Path

import torch
from omegaconf import DictConfig
from pytorch_lightning.plugins.io import TorchCheckpointIO

from cvae.errors import CheckpointError
from cvae.files import atomic_path
from cvae.model.module import CVAELitModule

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive


def architecture(hparams) -> dict:
    """The hyperparameters that fix the shapes of the weights, as plain values (a checkpoint from before the
    conv model and the learned prior existed holds the reference MLP)."""
    conv = hparams.get("architecture", "mlp") == "conv"
    return {
        "latent_dim": int(hparams["latent_dim"]),
        "hidden_dims": [int(width) for width in hparams["hidden_dims"]],
        "architecture": str(hparams.get("architecture", "mlp")),
        **({"channels": [int(width) for width in hparams["channels"]]} if conv else {}),
        "learned_prior": bool(hparams.get("learned_prior", False)),
    }


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, read as tensors and plain values only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass ckpt_path=<run dir>/checkpoints/best.ckpt")
    with open(path, "rb") as file:
        if file.read(4) != ZIP_MAGIC:
            raise CheckpointError(f"{path} is not a cvae checkpoint: it is not in torch's checkpoint format")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        refused = re.search(r"GLOBAL (\S+)", str(error))
        detail = f" (it refers to {refused.group(1)})" if refused else ""
        raise CheckpointError(
            f"{path} is not a cvae checkpoint: it holds objects beyond tensors and plain values{detail}, which are "
            f"never unpickled because that could run code"
        ) from None
    except Exception as error:  # truncated or corrupted: torch names the part it could not read
        first_sentence = str(error).split(". ")[0].strip() or type(error).__name__
        raise CheckpointError(f"{path} is truncated or corrupted ({first_sentence})") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise CheckpointError(f"{path} is not a cvae checkpoint: it lacks 'state_dict' and 'hyper_parameters'")
    return checkpoint


def load_module(path: str | Path) -> CVAELitModule:
    """The CVAELitModule a checkpoint describes: its hyperparameters rebuild the model, then its weights load."""
    checkpoint = read_checkpoint(path)
    module = CVAELitModule(**checkpoint["hyper_parameters"])
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not match the model its hyperparameters describe ({error})") from None
    return module.eval()


def check_resumable(path: str | Path, model_cfg: DictConfig) -> None:
    """Refuse, before training starts, a checkpoint whose model has other shapes than the config asks for."""
    saved, asked = architecture(read_checkpoint(path)["hyper_parameters"]), architecture(model_cfg)
    differing = [key for key in {**saved, **asked} if saved.get(key) != asked.get(key)]
    if differing:
        raise CheckpointError(
            f"{path} holds a model with {describe(saved, differing)} but the config asks for "
            f"{describe(asked, differing)}; resume with the overrides the run was started with"
        )


def describe(architecture: dict, keys: list[str]) -> str:
    return ", ".join(f"{key}={architecture[key]}" for key in keys if key in architecture)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place: a run killed while
    saving leaves the previous checkpoint intact, never a truncated one under its name."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_path(path) as temporary:
            super().save_checkpoint(checkpoint, temporary, storage_options)
