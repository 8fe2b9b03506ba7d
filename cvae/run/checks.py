"""The one place where the entry points' configs are checked, before any work starts: a bad value fails in a
second with a message that names the key, the value and what is allowed.

A rule is either (test, what is allowed) or a check of cvae.validate that raises its own message; keys absent
from a config are skipped. The library functions that take the same values call the same checks."""

from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cvae.errors import ConfigError
from cvae.explore.anomaly import SCORES
from cvae.explore.export import IMAGE_SET_SUFFIXES
from cvae.metrics.generation import FEATURE_EXTRACTORS
from cvae.validate import check_choice, check_count, parse_digit, parse_digits, positive_int, positive_number

Rule = tuple[Callable[[object], bool], str] | Callable[[object, str], object]


def optional(check: Callable[[object, str], object]) -> Callable[[object, str], object]:
    """A check that lets null through (the option is off)."""
    return lambda value, key: value is None or check(value, key)


def count(minimum: int = 1) -> Callable[[object, str], object]:
    return lambda value, key: check_count(value, key, minimum)


def choice(choices: tuple[str, ...]) -> Callable[[object, str], object]:
    return lambda value, key: check_choice(value, choices, key)


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
    "seed": (lambda value: isinstance(value, int) and not isinstance(value, bool), "an integer"),
    "trainer.max_epochs": (positive_int, "a positive integer, e.g. trainer.max_epochs=10"),
    "model.hidden_dims": (
        lambda value: len(value) > 0 and all(positive_int(width) for width in value),
        "a non-empty list of positive integers, e.g. model.hidden_dims=[512,256]",
    ),
    "model.beta": (lambda value: isinstance(value, (int, float)) and value >= 0, "a number >= 0"),
    "model.free_bits": (lambda value: isinstance(value, (int, float)) and value >= 0, "a number >= 0 (nats)"),
    "model.kl_warmup_epochs": (lambda value: isinstance(value, int) and value >= 0, "an integer >= 0"),
    "data.eval_batch_size": (positive_int, "a positive integer"),
    "model.steps_per_call": (positive_int, "a positive integer, e.g. model.steps_per_call=8"),
    # the model makes its optimizer steps itself (several per Lightning call), where Lightning clips nothing
    # and accumulates nothing: refused here in one line rather than by Lightning's traceback
    "trainer.gradient_clip_val": (lambda value: not value, "null: the model steps its optimizer itself, unclipped"),
    "trainer.accumulate_grad_batches": (lambda value: value == 1, "1 (raise batch_size instead)"),
    "data.val_size": (lambda value: positive_int(value) and value < 60_000, "an integer in 1..59999"),
}
EVALUATE_RULES: dict[str, Rule] = {
    "batch_size": TRAIN_RULES["batch_size"],
    "seed": TRAIN_RULES["seed"],
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
