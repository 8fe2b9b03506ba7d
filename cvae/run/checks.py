"""The one place where the entry points' configs are checked, before any work starts: a bad value fails in a
second with a message that names the key, the value and what is allowed.

A rule is either (test, what is allowed) or a check of cvae.validate that raises its own message; keys absent
from a config are skipped. The library functions that take the same values call the same checks.

No torch or Lightning at module level: train.py and evaluate.py run these checks before those imports (seconds),
so that a rejection comes back in about a second. Only check_hardware imports torch, to ask for a GPU."""

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cvae.errors import ConfigError
from cvae.explore import IMAGE_SET_SUFFIXES, SCORES
from cvae.metrics import FEATURE_EXTRACTORS
from cvae.sampling import COVARIANCES
from cvae.validate import check_choice, check_count, parse_digit, parse_digits, positive_int, positive_number

MAX_LAYERS = 100  # hidden layers a checkpoint may ask for (the reference has 2): a million would take minutes to build
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")  # Lightning's, with its "auto" and "gpu"
# Lightning's trainer.precision values (lightning_fabric.connector._PRECISION_INPUT; a test keeps them equal)
PRECISIONS = (
    *("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed"),
    *("32-true", "64-true", "64", "32", "16", "bf16", 64, 32, 16),
)

Rule = tuple[Callable[[object], bool], str] | Callable[[object, str], object]


def optional(check: Callable[[object, str], object]) -> Callable[[object, str], object]:
    """A check that lets null through (the option is off)."""
    return lambda value, key: value is None or check(value, key)


def count(minimum: int = 1) -> Callable[[object, str], object]:
    return lambda value, key: check_count(value, key, minimum)


def choice(choices: tuple[str, ...]) -> Callable[[object, str], object]:
    return lambda value, key: check_choice(value, choices, key)


def seed(value, key: str) -> None:
    """numpy's and Lightning's range of seeds."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ConfigError(f"{key}={value!r} is not allowed: it must be an integer in 0..4294967295, e.g. {key}=42")


def devices(value, key: str) -> None:
    """Lightning's forms: a count (-1: all), auto, device indices as a list or a string ("0,1")."""
    if value in ("auto", -1) or positive_int(value):
        return
    indices = str(value).rstrip(",").split(",") if isinstance(value, str) else value
    if not isinstance(value, (int, float)) and indices and all(str(index).strip().isdigit() for index in indices):
        return
    raise ConfigError(
        f"{key}={value!r} is not allowed: it must be a count of devices (e.g. {key}=1, -1 for all), auto, "
        f"or device indices such as {key}=[0,1]"
    )


def checkpoint_file(value, key: str) -> None:
    """An existing file, if given: a directory or a missing path is said before anything is imported."""
    if value is None:
        return
    path = Path(str(value))
    if path.is_dir():
        example = path / "last.ckpt"
        raise ConfigError(f"{key}={value} is a directory; pass the checkpoint file in it, e.g. {key}={example}")
    if not path.is_file():
        raise ConfigError(f"{key}={value} does not exist; pass {key}=<run dir>/checkpoints/last.ckpt")


def image_set(value, key: str) -> None:
    """test, or an existing .pt / .npz file of images and labels."""
    if value in (None, "test"):
        return
    path = Path(str(value))
    if not path.is_file() or path.suffix not in IMAGE_SET_SUFFIXES:
        raise ConfigError(f"{key}={value!r} is neither test nor an existing .pt or .npz file")


TRAIN_RULES: dict[str, Rule] = {
    "latent_dim": (positive_int, "a positive integer, e.g. latent_dim=2"),
    "batch_size": (positive_int, "a positive integer, e.g. batch_size=128"),
    "lr": (positive_number, "a positive number, e.g. lr=1e-3"),
    "seed": seed,
    "model.eval_seed": seed,
    "matmul_precision": choice(MATMUL_PRECISIONS),
    "trainer.accelerator": choice(ACCELERATORS),
    "trainer.devices": devices,
    "trainer.precision": choice(PRECISIONS),
    "trainer.max_epochs": (positive_int, "a positive integer, e.g. trainer.max_epochs=10"),
    "model.beta": (lambda value: isinstance(value, (int, float)) and value >= 0, "a number >= 0"),
    "model.free_bits": (lambda value: isinstance(value, (int, float)) and value >= 0, "a number >= 0 (nats)"),
    "model.kl_warmup_epochs": (lambda value: isinstance(value, int) and value >= 0, "an integer >= 0"),
    "data.eval_batch_size": (positive_int, "a positive integer"),
    "trainer.gradient_clip_val": (
        lambda value: value is None or (positive_number(value) and value < float("inf")),
        "null (no clipping) or a positive number, e.g. trainer.gradient_clip_val=1.0",
    ),
    "trainer.accumulate_grad_batches": (positive_int, "a positive integer, e.g. trainer.accumulate_grad_batches=4"),
    "data.val_size": (lambda value: positive_int(value) and value < 60_000, "an integer in 1..59999"),
    "callbacks.generation_quality.features": choice(FEATURE_EXTRACTORS),
    "sampler.components": (positive_int, "a positive integer, e.g. sampler.components=10"),
    "sampler.covariance": choice(COVARIANCES),
    "resume.allow_changes": (lambda value: isinstance(value, bool), "true or false"),
    "ckpt_path": checkpoint_file,  # last: a bad value elsewhere is said before a missing file
}
# a checkpoint's hyper_parameters, checked before a model is built from them (keys as CVAELitModule takes them;
# the network's arguments are checked by the network's own constructor)
CHECKPOINT_RULES: dict[str, Rule] = {
    "net.latent_dim": TRAIN_RULES["latent_dim"],
    "compile": (lambda value: isinstance(value, bool), "true or false"),
    "beta": TRAIN_RULES["model.beta"],
    "free_bits": TRAIN_RULES["model.free_bits"],
    "kl_warmup_epochs": TRAIN_RULES["model.kl_warmup_epochs"],
    "eval_seed": seed,
}
EVALUATE_RULES: dict[str, Rule] = {
    "batch_size": TRAIN_RULES["batch_size"],
    **{key: TRAIN_RULES[key] for key in ("seed", "trainer.accelerator", "trainer.devices", "trainer.precision")},
    **{key: TRAIN_RULES[key] for key in ("sampler.components", "sampler.covariance")},
    "samples_per_digit": (positive_int, "a positive integer"),
    "quality.num_samples": (
        lambda value: positive_int(value) and value % 10 == 0,
        "a positive multiple of 10 (the same count of each digit)",
    ),
    "quality.features": choice(FEATURE_EXTRACTORS),
    "quality.iw_samples": (positive_int, "a positive integer (1 gives the ELBO)"),
    "quality.cas_per_digit": (positive_int, "a positive integer"),
    "quality.cas_epochs": (positive_int, "a positive integer"),
    "digits": optional(parse_digits),
    "digit": optional(parse_digit),
    "variants": count(),
    "interpolation_steps": count(),
    "projector_images": count(),
    "export.per_digit": count(minimum=0),  # 0: no export
    "anomaly.score": choice(SCORES),
    "anomaly.k": count(),
    "anomaly.scores_for": image_set,
    "ckpt_path": checkpoint_file,
}


def check_config(cfg: DictConfig, rules: dict[str, Rule]) -> None:
    for key, rule in rules.items():
        node, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, node) if node else cfg
        if parent is None or leaf not in parent:
            continue
        value = parent[leaf]
        if callable(rule):
            rule(value, key)
            continue
        is_allowed, allowed = rule
        try:
            ok = is_allowed(value)
        except TypeError:
            ok = False
        if not ok:
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {allowed}")


def check_hardware(cfg: DictConfig) -> None:
    """A GPU asked for where torch sees none (imports torch: run after the value checks)."""
    accelerator = OmegaConf.select(cfg, "trainer.accelerator")
    if accelerator in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError(
                f"trainer.accelerator={accelerator} but torch sees no CUDA GPU here; use trainer.accelerator=cpu "
                f"(or auto), or run on a machine with a GPU"
            )
