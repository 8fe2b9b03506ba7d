"""The types and limits of the entry points' config values, as dataclasses checked at launch so that `latent_dim=abc`
fails in one line (not in Hydra's defaults: it reports a composition error in several). Torch-free."""

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cvae.errors import ConfigError
from cvae.explore import IMAGE_SET_SUFFIXES, SCORES
from cvae.metrics import FEATURE_EXTRACTORS, LABELS, RESIZES
from cvae.trust import first_line, leaves
from cvae.validate import (
    MAX_IMAGES,
    MAX_SAMPLES,
    check_at_most,
    check_choice,
    check_count,
    check_finite,
    check_flag,
    check_folder,
    check_seed,
    parse_digit,
    parse_digits,
)

MAX_WIDTH = 2**16  # latent dimensions: the reference has 2 (a model of more is refused by its size anyway)
MAX_IW_SAMPLES = 10_000  # importance samples per test image (the default is 100)
MAX_SCALE = 32  # picture_scale: a grid of a thousand digits drawn 32x is already about 0.8 GB of floats
# what to pass for a key the config leaves mandatory (???)
MANDATORY_EXAMPLES = {"ckpt_path": "outputs/<date>/<time>/checkpoints/best.ckpt"}


def limit(check, default=MISSING):
    """A field whose value passes `check(value, key)` (which raises ConfigError), or is null where the default is."""
    allowed = (lambda value, key: value is None or check(value, key)) if default is None else check
    return field(default=default, metadata={"check": allowed})


def at_most(maximum: int, multiple_of: int = 1, minimum: int = 1):
    return lambda value, key: check_at_most(value, key, maximum, multiple_of, minimum)


def one_of(*choices):
    return lambda value, key: check_choice(value, choices, key)


def positive(value, key: str) -> None:
    check_finite(value, key, 0.0, above=True)


def batches(value, key: str) -> None:
    """Lightning's limit_*_batches: null, a fraction in (0, 1] or a count >= 1 (0 would train or measure nothing)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if value is not None and not (number and value > 0 and (isinstance(value, int) or value <= 1)):
        raise ConfigError(
            f"{key}={value!r} is not allowed: it must be null (every batch), a fraction in (0, 1] or a count of "
            f"batches >= 1, e.g. {key}=0.1"
        )


def devices(value, key: str) -> None:
    """Lightning's forms: a count (-1: all), auto, distinct device indices as a list or a string ("0,1")."""
    if value in ("auto", -1) or (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        return
    indices = str(value).rstrip(",").split(",") if isinstance(value, str) else value
    indices = [str(index).strip() for index in indices] if isinstance(value, (str, list, tuple)) else []
    if not (indices and all(index.isdigit() for index in indices) and len(set(map(int, indices))) == len(indices)):
        raise ConfigError(
            f"{key}={value!r} is not allowed: it must be a count of devices (e.g. {key}=1, -1 for all), auto, "
            f"or distinct device indices such as {key}=[0,1]"
        )


def existing_file(value, key: str) -> None:
    """A file that exists: a directory or a missing path is said before anything is imported."""
    path = Path(str(value))
    if path.is_dir():
        raise ConfigError(
            f"{key}={value} is a directory; pass the checkpoint file in it, e.g. {key}={path / 'last.ckpt'}"
        )
    if not path.is_file():
        raise ConfigError(f"{key}={value} does not exist; pass {key}=<run dir>/checkpoints/last.ckpt")


def image_set(value, key: str) -> None:
    """test, or an existing .pt / .npz file of images and labels."""
    path = Path(str(value))
    if value not in (None, "test") and not (path.is_file() and path.suffix in IMAGE_SET_SUFFIXES):
        raise ConfigError(f"{key}={value!r} is neither test nor an existing .pt or .npz file")


@dataclass
class Trainer:
    """The Trainer options the project sets; any other of Lightning's passes through, checked by Lightning."""

    accelerator: str = limit(one_of("auto", "cpu", "gpu", "cuda", "mps", "tpu"))
    devices: Any = limit(devices)
    num_nodes: int = limit(check_count)
    max_epochs: int = limit(check_count)
    log_every_n_steps: int = limit(check_count)
    gradient_clip_val: Any = limit(positive, None)
    accumulate_grad_batches: int = limit(check_count)
    check_val_every_n_epoch: Any = limit(check_count, None)
    limit_train_batches: Any = limit(batches, None)
    limit_val_batches: Any = limit(batches, None)
    limit_test_batches: Any = limit(batches, None)
    enable_progress_bar: bool = limit(check_flag)
    enable_model_summary: bool = limit(check_flag)


@dataclass
class Resume:
    auto: bool = limit(check_flag, False)
    allow_changes: bool = limit(check_flag, False)


@dataclass
class Train:
    task_name: str = MISSING
    latent_dim: int = limit(at_most(MAX_WIDTH))
    batch_size: int = limit(check_count)
    lr: float = limit(positive)
    seed: int = limit(check_seed)
    matmul_precision: str = limit(one_of("highest", "high", "medium"))  # torch.set_float32_matmul_precision's
    resume: Resume = field(default_factory=Resume)
    optimized_metric: str = MISSING
    trainer: Trainer = field(default_factory=Trainer)
    ckpt_path: Any = limit(existing_file, None)  # last: a bad value elsewhere is said before a missing file


@dataclass
class Quality:
    num_samples: int = limit(at_most(MAX_SAMPLES, multiple_of=10, minimum=10))  # the same count of each digit
    features: str = limit(one_of(*FEATURE_EXTRACTORS))
    iw_samples: int = limit(at_most(MAX_IW_SAMPLES))  # 1 gives the ELBO
    cas: bool = limit(check_flag)
    cas_per_digit: int = limit(at_most(MAX_IMAGES))
    cas_epochs: int = limit(check_count)
    resize: str = limit(one_of(*RESIZES))
    labels: str = limit(one_of(*LABELS))
    stretch: bool = limit(check_flag)
    reconstructions: bool = limit(check_flag)
    reference_cache: bool = limit(check_flag)
    cache_dir: Any = limit(check_folder, None)


@dataclass
class Export:
    per_digit: int = limit(at_most(MAX_IMAGES, minimum=0))
    image_folder: bool = limit(check_flag)


@dataclass
class Anomaly:
    scores_for: Any = limit(image_set, None)
    score: str = limit(one_of(*SCORES))
    k: int = limit(at_most(MAX_IMAGES))
    demo: bool = limit(check_flag)


@dataclass
class Evaluate:
    task_name: str = MISSING
    seed: int = limit(check_seed)
    batch_size: int = limit(check_count)
    samples_per_digit: int = limit(at_most(MAX_IMAGES))
    picture_scale: int = limit(at_most(MAX_SCALE))
    digits: Any = limit(parse_digits, None)
    digit: Any = limit(parse_digit, None)
    variants: int = limit(at_most(MAX_IMAGES))
    latent_map: bool = limit(check_flag)
    interpolate: bool = limit(check_flag)
    interpolation_steps: int = limit(at_most(MAX_IMAGES))
    style_transfer: bool = limit(check_flag)
    projector: bool = limit(check_flag)
    projector_images: int = limit(at_most(MAX_IMAGES))
    quality: Quality = field(default_factory=Quality)
    export: Export = field(default_factory=Export)
    anomaly: Anomaly = field(default_factory=Anomaly)
    trainer: Trainer = field(default_factory=Trainer)
    ckpt_path: Any = limit(existing_file)


SCHEMAS = {"train": Train, "evaluate": Evaluate}


def check_values(task: DictConfig) -> None:
    """The task config against its entry point's schema: mandatory keys given, then every field the schema names of
    its type and within its limit (only those resolved: the rest may refer to what Hydra sets later)."""
    # ??? in the YAML, read as written (OmegaConf.missing_keys resolves every interpolation: minutes for a crafted one)
    missing = sorted(key for key, value in leaves(OmegaConf.to_container(task, resolve=False)) if value == "???")
    if missing:
        example = MANDATORY_EXAMPLES.get(missing[0], "<value>")
        raise ConfigError(f"{missing[0]} is required: pass {missing[0]}={example}")
    check_fields(SCHEMAS[task.task_name], task, "")


TYPES = {int: (int, "an integer"), float: ((int, float), "a number"), bool: (bool, "true or false"), str: (str, "text")}


def check_fields(schema, node: DictConfig, prefix: str) -> None:
    for spec in dataclasses.fields(schema):
        key = f"{prefix}{spec.name}"
        if not isinstance(node, DictConfig) or spec.name not in node:
            continue
        try:
            value = node[spec.name]
        except OmegaConfBaseException as error:  # an interpolation that does not resolve: ${oc.env:UNSET}
            raise ConfigError(f"{key} cannot be resolved ({first_line(error)}); give it a value") from None
        if dataclasses.is_dataclass(spec.type):
            check_fields(spec.type, value, f"{key}.")
            continue
        kinds, said = TYPES.get(spec.type, (object, ""))
        if not isinstance(value, kinds) or (isinstance(value, bool) and spec.type is not bool):
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {said}")
        if "check" in spec.metadata:
            spec.metadata["check"](OmegaConf.to_container(value) if OmegaConf.is_config(value) else value, key)


def typed_overrides(config: DictConfig) -> list[str]:
    """The overrides as typed (not resolved: `lr=${oc.env:X}` is text here)."""
    overrides = OmegaConf.select(config, "hydra.overrides", default=None)
    return OmegaConf.to_container(overrides, resolve=False).get("task", []) if overrides is not None else []


def check_added_keys(config: DictConfig) -> None:
    """A top-level key a `+key=value` added, which nothing reads (`+latentdim=3`, as Hydra's hint for a misspelt key
    leads to, would train at latent_dim 2): refused, naming the nearest known key."""
    groups = set(OmegaConf.select(config, "hydra.runtime.choices", default={}) or {})
    for override in typed_overrides(config):
        key = override.lstrip("+").partition("=")[0]
        if not override.startswith("+") or "." in key or "@" in key or key in groups or key == "hydra":
            continue
        known = [name for name in config if name not in (key, "hydra")]
        nearest = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        fix = f"did you mean {nearest[0]}=...?" if nearest else f"the known keys are {', '.join(known)}"
        raise ConfigError(f"{key} is not a key of this config, and nothing would read it; {fix}")


def check_typed_digits(config: DictConfig) -> None:
    """digits and digit as typed: Hydra reads digits=1_000 as the number 1000, drawing "1000"."""
    for override in typed_overrides(config):
        key, _, value = override.lstrip("+~").partition("=")
        if key in ("digits", "digit") and value and value != "null":
            (parse_digits if key == "digits" else parse_digit)(value.strip("'\""), key)
