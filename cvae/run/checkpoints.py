"""Checkpoints as data only: torch.load(weights_only=True) never runs code from the file; checks that a file
is a cvae checkpoint of the model asked for, with sane hyperparameters, and that a resume continues the same run;
and checkpoint writes that are never seen half-done."""

import inspect
import pickle
import re
import zipfile
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.plugins.io import TorchCheckpointIO

from cvae.errors import CheckpointError, ConfigError
from cvae.files import atomic_path
from cvae.model.cvae import CVAE
from cvae.model.module import CVAELitModule
from cvae.run.checks import CHECKPOINT_RULES, MAX_LAYERS, check_config

ZIP_MAGIC = b"PK\x03\x04"  # torch.save writes a zip archive
# Far above any model of this project (the reference MLP has about a million): a checkpoint asking for more is
# refused before anything is allocated (hidden_dims=[2000000000] would ask for terabytes).
MAX_PARAMETERS = 2**30
# What may differ between a run and its resume: where things go and what is shown or measured, not what is
# trained (max_epochs: a resume may train on for longer; steps_per_call: the same steps, grouped otherwise).
NOT_TRAINING = (
    *("ckpt_path", "resume", "paths", "hydra", "logger", "callbacks", "sampler", "task_name", "optimized_metric"),
    *("trainer.max_epochs", "trainer.max_steps", "trainer.max_time", "trainer.default_root_dir"),
    *("trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps"),
    *("trainer.limit_val_batches", "trainer.limit_test_batches", "trainer.check_val_every_n_epoch"),
    *("data.data_dir", "data.download", "data.num_workers", "data.eval_batch_size", "model.compile"),
    "model.steps_per_call",
)


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
    return checkpoint


def archive_damage(path: Path) -> str | None:
    """What is broken in the zip archive: a part whose bytes fail their CRC-32 (torch.load does not check them,
    so a flipped byte in the weights would load as other weights) or an incomplete archive; None if whole."""
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        return f"not a complete archive: {first_sentence(error)}"
    return f"{damaged} fails its checksum" if damaged else None


def first_sentence(error: Exception) -> str:
    return str(error).split(". ")[0].splitlines()[0].strip() if str(error).strip() else type(error).__name__


def hyperparameter_defaults() -> dict:
    """What CVAELitModule takes, with its defaults: its own arguments and the CVAE's it passes on."""
    parameters = {**inspect.signature(CVAE).parameters, **inspect.signature(CVAELitModule).parameters}
    taken = {name: parameter for name, parameter in parameters.items() if name not in ("optimizer", "model_options")}
    return {name: parameter.default for name, parameter in taken.items()}


def check_hyperparameters(hparams, path: Path) -> dict:
    """Types, ranges and size of the model a checkpoint describes, before anything is built from it; returns them
    with the defaults of what they leave out (a checkpoint from before an option existed)."""
    if not isinstance(hparams, dict):
        raise CheckpointError(f"{path} is not a cvae checkpoint: its hyper_parameters are no mapping")
    defaults = hyperparameter_defaults()
    unknown = sorted(set(map(str, hparams)) - defaults.keys())
    if unknown:
        raise CheckpointError(
            f"{path} holds hyperparameters this version of cvae does not know ({', '.join(unknown)}); it was "
            f"written by another program or version"
        )
    hparams = {**defaults, **hparams}
    too_long = sorted(
        key for key, value in hparams.items() if isinstance(value, list | tuple) and len(value) > MAX_LAYERS
    )
    if too_long:  # said before OmegaConf reads it (a million entries take it minutes)
        raise CheckpointError(
            f"{path} holds a bad hyperparameter: {too_long[0]} has {len(hparams[too_long[0]])} entries, more than the "
            f"{MAX_LAYERS} layers this project allows"
        )
    try:
        check_config(OmegaConf.create(hparams), CHECKPOINT_RULES)
    except ConfigError as error:
        raise CheckpointError(f"{path} holds a bad hyperparameter: {error}") from None
    except Exception:  # OmegaConf refuses values that are no plain config values (a tensor, say)
        raise CheckpointError(f"{path} holds hyperparameters that are not plain values") from None
    parameters = parameter_count(hparams)
    if parameters > MAX_PARAMETERS:
        raise CheckpointError(
            f"{path} describes a model of about {parameters:.2g} parameters ({4 * parameters / 1e9:.3g} GB), beyond "
            f"the {MAX_PARAMETERS:.2g} this project allows; it is not a checkpoint of a cvae run"
        )
    return hparams


def parameter_count(hparams: dict) -> int:
    """How many weights the model of these hyperparameters holds: the model itself, built on torch's meta device,
    which gives every tensor its shape and allocates none."""
    options = {key: hparams[key] for key in ("architecture", "channels", "learned_prior")}
    with torch.device("meta"):
        model = CVAE(hparams["latent_dim"], hparams["hidden_dims"], **options)
    return sum(parameter.numel() for parameter in model.parameters())


def load_module(path: str | Path) -> CVAELitModule:
    """The CVAELitModule a checkpoint describes: its hyperparameters rebuild the model, then its weights load."""
    checkpoint = read_checkpoint(path)
    module = CVAELitModule(**checkpoint["hyper_parameters"])
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise CheckpointError(f"{path} does not match the model its hyperparameters describe ({error})") from None
    return module.eval()


def check_resumable(path: str | Path, cfg: DictConfig) -> dict[str, dict]:
    """Refuse, before training starts, a resume that is not of the same run: a model of other shapes always,
    other training settings (seed, batch_size, lr, data, ...) unless resume.allow_changes. Returns the changed
    settings, {key: {"checkpoint": value, "now": value}}, for the record."""
    checkpoint = read_checkpoint(path)
    saved, asked = architecture(checkpoint["hyper_parameters"]), architecture(cfg.model)
    differing = [key for key in {**saved, **asked} if saved.get(key) != asked.get(key)]
    if differing:
        raise CheckpointError(
            f"{path} holds a model with {describe(saved, differing)} but the config asks for "
            f"{describe(asked, differing)}; resume with the overrides the run was started with"
        )
    callbacks = checkpoint.get("callbacks")
    recorded = callbacks.get(RunRecord.__qualname__) if isinstance(callbacks, dict) else None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("settings"), dict):
        return {}  # written before runs recorded their settings: only the architecture can be compared
    saved, asked = recorded["settings"], training_settings(cfg)
    changed = [key for key in sorted({**saved, **asked}) if saved.get(key, "<unset>") != asked.get(key, "<unset>")]
    if changed and not OmegaConf.select(cfg, "resume.allow_changes", default=False):
        raise CheckpointError(
            f"{path} is of a run with {describe(saved, changed)} but this launch asks for "
            f"{describe(asked, changed)}: a resume continues the same run. Resume with the run's own values, or "
            f"pass resume.allow_changes=true to continue it changed (recorded in the run dir's resumes.json)"
        )
    return {key: {"checkpoint": saved.get(key), "now": asked.get(key)} for key in changed}


def describe(settings: dict, keys: list[str]) -> str:
    return ", ".join(f"{key}={settings.get(key, '<unset>')}" for key in keys)


def training_settings(cfg: DictConfig) -> dict:
    """Every resolved setting that changes what is trained, by dotted key (NOT_TRAINING left out)."""
    settings = {}

    def visit(node: DictConfig, prefix: str) -> None:
        for key in node:
            dotted = f"{prefix}{key}"
            if dotted in NOT_TRAINING:
                continue
            value = node[key]
            if isinstance(value, DictConfig):
                visit(value, f"{dotted}.")
            else:
                settings[dotted] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_list(value) else value

    visit(cfg, "")
    return settings


class RunRecord(pl.Callback):
    """Keeps the run's training settings in every checkpoint, so that a resume can be compared with the run."""

    def __init__(self, cfg: DictConfig):
        self.settings = training_settings(cfg)

    def state_dict(self) -> dict:
        return {"settings": self.settings}

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # a resume with resume.allow_changes=true and another lr: the optimizer Lightning restored from the
        # checkpoint takes the lr asked for (and recorded), not the checkpoint's; otherwise this changes nothing
        lr = self.settings.get("model.optimizer.lr")
        if lr is None:
            return
        for group in (group for optimizer in trainer.optimizers for group in optimizer.param_groups):
            group["lr"] = lr


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file beside it, then renames it into place: a run killed while
    saving leaves the previous checkpoint intact, never a truncated one under its name."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        with atomic_path(path) as temporary:
            super().save_checkpoint(checkpoint, temporary, storage_options)
