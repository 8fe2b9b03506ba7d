"""Config checks that run before any work starts, so a bad value fails in a second with a message that names
the key, the value and what is allowed."""

from omegaconf import DictConfig, OmegaConf

from cvae.errors import ConfigError


def positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def positive_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


# key -> (test, what is allowed); keys absent from a config are skipped
TRAIN_RULES = {
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
    "data.val_size": (lambda value: positive_int(value) and value < 60_000, "an integer in 1..59999"),
}
EVALUATE_RULES = {
    "batch_size": TRAIN_RULES["batch_size"],
    "seed": TRAIN_RULES["seed"],
    "samples_per_digit": (positive_int, "a positive integer"),
    "quality.num_samples": (
        lambda value: positive_int(value) and value % 10 == 0,
        "a positive multiple of 10 (the same count of each digit)",
    ),
    "quality.iw_samples": (positive_int, "a positive integer (1 gives the ELBO)"),
    "quality.cas_per_digit": (positive_int, "a positive integer"),
    "quality.cas_epochs": (positive_int, "a positive integer"),
}


def check_config(cfg: DictConfig, rules: dict) -> None:
    for key, (is_allowed, allowed) in rules.items():
        node, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, node) if node else cfg
        if parent is None or leaf not in parent:
            continue
        value = parent[leaf]
        try:
            ok = is_allowed(value)
        except TypeError:
            ok = False
        if not ok:
            raise ConfigError(f"{key}={value!r} is not allowed: it must be {allowed}")
