"""The one place where the entry points' configs are checked, before any work starts: a bad value fails in a
second with a message that names the key, the value and what is allowed.

A rule is either (test, what is allowed) or a check of cvae.validate that raises its own message; keys absent
from a config are skipped. The library functions that take the same values call the same checks.

No torch or Lightning at module level: train.py and evaluate.py run these checks before those imports (seconds),
so that a rejection comes back in about a second. Only check_hardware imports torch, to ask for a GPU."""

import difflib
import math
import re
from collections.abc import Callable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cvae.errors import ConfigError
from cvae.explore import IMAGE_SET_SUFFIXES, SCORES
from cvae.metrics import FEATURE_EXTRACTORS
from cvae.sampling import COVARIANCES
from cvae.trust import HYDRA_TARGETS, check_target_name, plain, targets_in
from cvae.validate import check_choice, parse_digit, parse_digits, positive_int

MAX_LAYERS = 100  # hidden layers a checkpoint may ask for (the reference has 2): a million would take minutes to build
# Far above any model of this project (the reference MLP has about a million): a config or a checkpoint asking for
# more is refused before anything is allocated (hidden_dims=[2000000000] would ask for terabytes).
MAX_PARAMETERS = 2**30
MAX_WIDTH = 2**16  # units of one layer, latent dimensions, channels: the reference's widest layer has 512
MNIST_FEATURES = 28 * 28 + 10  # what a network's first layer takes: an image and its one-hot digit
# counts of evaluate.py and the callbacks, each allocated at once: far above the defaults, far below a memory error
MAX_SAMPLES = 1_000_000  # generated digits of one FID measurement (the default is 10,000)
MAX_IMAGES = 100_000  # images of one figure or export
MAX_IW_SAMPLES = 10_000  # importance samples per test image (the default is 100)
MAX_EXPANDED = 1_000_000  # characters a config string may expand to through interpolations
# the keys a config's hydra.job.env_set may set: what the project's code, torch and the trackers read. Nothing
# else: a config file is data (docs/trust.md), and GIT_CONFIG_*, LD_PRELOAD, PYTHON* ... would run code.
ENV_SET_ALLOWED = (
    *("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF"),
    *("NCCL_DEBUG", "WANDB_MODE", "WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME", "TORCH_HOME", "CVAE_DATA_DIR"),
)
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision's
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")  # Lightning's, with its "auto" and "gpu"
# Lightning's trainer.precision values (lightning_fabric.connector._PRECISION_INPUT; a test keeps them equal)
PRECISIONS = (
    *("transformer-engine", "transformer-engine-float16", "16-true", "16-mixed", "bf16-true", "bf16-mixed"),
    *("32-true", "64-true", "64", "32", "16", "bf16", 64, 32, 16),
)

# what to pass for a key the config leaves mandatory (???)
MANDATORY_EXAMPLES = {"ckpt_path": "outputs/<date>/<time>/checkpoints/best.ckpt"}

Rule = tuple[Callable[[object], bool], str] | Callable[[object, str], object]


def optional(check: Callable[[object, str], object]) -> Callable[[object, str], object]:
    """A check that lets null through (the option is off)."""
    return lambda value, key: value is None or check(value, key)


def choice(choices: tuple[str, ...]) -> Callable[[object, str], object]:
    return lambda value, key: check_choice(value, choices, key)


def finite(minimum: float, above: bool = False) -> tuple[Callable[[object], bool], str]:
    """A finite number >= minimum (> with `above`): inf and nan pass no comparison a run relies on."""
    relation = ">" if above else ">="

    def is_allowed(value) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        return value > minimum if above else value >= minimum

    return is_allowed, f"a finite number {relation} {minimum:g}"


def at_most(maximum: int, multiple_of: int = 1) -> tuple[Callable[[object], bool], str]:
    """A positive integer up to `maximum` (allocated at once: a bigger one is a memory error after minutes)."""
    what = f"a positive multiple of {multiple_of}" if multiple_of > 1 else "a positive integer"
    return (lambda value: positive_int(value) and value <= maximum and value % multiple_of == 0), (
        f"{what} up to {maximum:,}"
    )


BOOLEAN = (lambda value: isinstance(value, bool), "true or false")
NON_NEGATIVE = (lambda value: positive_int(value) or (value == 0 and not isinstance(value, bool)), "an integer >= 0")
EVERY_N = (positive_int, "a positive integer (every n epochs; 0 would divide by zero)")


def batches(value, key: str) -> None:
    """Lightning's limit_*_batches: null (every batch), a fraction in [0, 1] or a count of batches >= 0."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
        ok = False
    else:
        ok = isinstance(value, int) or value <= 1
    if not ok:
        raise ConfigError(
            f"{key}={value!r} is not allowed: it must be a fraction in 0..1 or a count of batches >= 0, e.g. {key}=0.1"
        )


def network(net, key: str) -> None:
    """The network's sizes, whatever its class, without importing it (torch): every whole number or list of them
    in its config is a width, a count of channels or of layers, checked positive and capped, and the layers they
    chain capped in parameters, so that no config allocates terabytes. (Its constructor checks the rest.)"""
    if not isinstance(net, DictConfig):
        return
    parameters = 0
    for name, value in net.items():
        if str(name).startswith("_") or isinstance(value, bool) or name == "latent_dim":
            continue  # latent_dim: the top-level rule
        values = list(value) if OmegaConf.is_list(value) else [value] if isinstance(value, int) else None
        if values is None or not all(isinstance(width, int) and not isinstance(width, bool) for width in values):
            continue  # not a size: the constructor's to check
        if not values or len(values) > MAX_LAYERS or not all(0 < width <= MAX_WIDTH for width in values):
            raise ConfigError(
                f"{key}.{name}={values if OmegaConf.is_list(value) else value!r} is not allowed: it must be "
                f"{'1 to ' + str(MAX_LAYERS) + ' ' if OmegaConf.is_list(value) else ''}positive integers up to "
                f"{MAX_WIDTH:,}, e.g. {key}.{name}=[512,256]"
            )
        chain = [MNIST_FEATURES, *values]
        parameters += sum(fan_in * fan_out for fan_in, fan_out in zip(chain, chain[1:]))
    if parameters > MAX_PARAMETERS:
        raise ConfigError(
            f"{key} asks for about {parameters:.2g} parameters, beyond the {MAX_PARAMETERS:.2g} this project allows; "
            f"choose smaller widths"
        )


def callback_periods(callbacks, key: str) -> None:
    """Every callback's every_n_epochs: a divisor, so positive."""
    if not isinstance(callbacks, DictConfig):
        return
    for name, entry in callbacks.items():
        if isinstance(entry, DictConfig) and "every_n_epochs" in entry:
            check_config(entry, {"every_n_epochs": EVERY_N}, prefix=f"{key}.{name}.")


def seed(value, key: str) -> None:
    """numpy's and Lightning's range of seeds."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
        raise ConfigError(f"{key}={value!r} is not allowed: it must be an integer in 0..4294967295, e.g. {key}=42")


def devices(value, key: str) -> None:
    """Lightning's forms: a count (-1: all), auto, device indices as a list or a string ("0,1")."""
    if value in ("auto", -1) or positive_int(value):
        return
    indices = str(value).rstrip(",").split(",") if isinstance(value, str) else value
    listed = isinstance(value, (str, list, tuple)) or OmegaConf.is_list(value)
    indices = [str(index).strip() for index in indices] if listed else []
    if indices and all(index.isdigit() for index in indices) and len(set(map(int, indices))) == len(indices):
        return
    raise ConfigError(
        f"{key}={value!r} is not allowed: it must be a count of devices (e.g. {key}=1, -1 for all), auto, "
        f"or distinct device indices such as {key}=[0,1]"
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
    "latent_dim": (lambda value: positive_int(value) and value <= MAX_WIDTH, f"a positive integer up to {MAX_WIDTH:,}"),
    "batch_size": (positive_int, "a positive integer, e.g. batch_size=128"),
    "lr": (finite(0, above=True)[0], "a finite number > 0, e.g. lr=1e-3"),
    "seed": seed,
    "model.eval_seed": seed,
    "matmul_precision": choice(MATMUL_PRECISIONS),
    "trainer.accelerator": choice(ACCELERATORS),
    "trainer.devices": devices,
    "trainer.precision": choice(PRECISIONS),
    "trainer.max_epochs": (positive_int, "a positive integer, e.g. trainer.max_epochs=10"),
    "trainer.check_val_every_n_epoch": (lambda value: value is None or positive_int(value), "null or " + EVERY_N[1]),
    "trainer.log_every_n_steps": (positive_int, "a positive integer"),
    **{f"trainer.limit_{split}_batches": batches for split in ("train", "val", "test")},
    **{f"trainer.{flag}": BOOLEAN for flag in ("enable_progress_bar", "enable_model_summary")},
    "model.net": network,
    "model.net.learned_prior": BOOLEAN,
    "model.compile": BOOLEAN,
    "model.beta": finite(0),
    "model.free_bits": (finite(0)[0], "a finite number >= 0 (nats)"),
    "model.kl_warmup_epochs": NON_NEGATIVE,
    "data.eval_batch_size": (positive_int, "a positive integer"),
    "data.loader": choice(("memory", "dataloader")),
    "data.num_workers": NON_NEGATIVE,
    "data.download": BOOLEAN,
    "trainer.gradient_clip_val": (
        lambda value: value is None or finite(0, above=True)[0](value),
        "null (no clipping) or a finite number > 0, e.g. trainer.gradient_clip_val=1.0",
    ),
    "trainer.accumulate_grad_batches": (positive_int, "a positive integer, e.g. trainer.accumulate_grad_batches=4"),
    "data.val_size": (lambda value: positive_int(value) and value < 60_000, "an integer in 1..59999"),
    "callbacks": callback_periods,
    "callbacks.generation_quality.num_samples": at_most(MAX_SAMPLES, multiple_of=10),
    "callbacks.generation_quality.features": choice(FEATURE_EXTRACTORS),
    "callbacks.latent_exploration.num_images": at_most(MAX_IMAGES),
    "callbacks.latent_projector.num_images": at_most(MAX_IMAGES),
    "sampler.components": at_most(MAX_IMAGES),
    "sampler.covariance": choice(COVARIANCES),
    "sampler.max_iterations": (positive_int, "a positive integer"),
    "resume.allow_changes": BOOLEAN,
    "ckpt_path": checkpoint_file,  # last: a bad value elsewhere is said before a missing file
}
EVALUATE_RULES: dict[str, Rule] = {
    "batch_size": TRAIN_RULES["batch_size"],
    **{key: TRAIN_RULES[key] for key in ("seed", "trainer.accelerator", "trainer.devices", "trainer.precision")},
    **{key: TRAIN_RULES[key] for key in ("sampler.components", "sampler.covariance")},
    "samples_per_digit": at_most(MAX_IMAGES),
    "quality.num_samples": at_most(MAX_SAMPLES, multiple_of=10),  # the same count of each digit
    "quality.features": choice(FEATURE_EXTRACTORS),
    "quality.iw_samples": at_most(MAX_IW_SAMPLES),  # 1 gives the ELBO
    "quality.cas": BOOLEAN,
    "quality.cas_per_digit": at_most(MAX_IMAGES),
    "quality.cas_epochs": (positive_int, "a positive integer"),
    "digits": optional(parse_digits),
    "digit": optional(parse_digit),
    "variants": at_most(MAX_IMAGES),
    "interpolation_steps": at_most(MAX_IMAGES),
    "projector_images": at_most(MAX_IMAGES),
    "export.per_digit": (
        lambda value: value == 0 or at_most(MAX_IMAGES)[0](value),
        f"0 (no export) up to {MAX_IMAGES:,}",
    ),
    **{key: BOOLEAN for key in ("latent_map", "interpolate", "style_transfer", "projector", "export.image_folder")},
    "anomaly.score": choice(SCORES),
    "anomaly.k": at_most(MAX_IMAGES),
    "anomaly.demo": BOOLEAN,
    "anomaly.scores_for": image_set,
    "ckpt_path": checkpoint_file,
}


def check_config(cfg: DictConfig, rules: dict[str, Rule], prefix: str = "") -> None:
    for key, rule in rules.items():
        node, _, leaf = key.rpartition(".")
        try:
            parent = OmegaConf.select(cfg, node) if node else cfg
            if not isinstance(parent, DictConfig) or leaf not in parent:
                continue
            value = parent[leaf]
        except OmegaConfBaseException as error:  # an interpolation that does not resolve: ${oc.env:UNSET}
            raise ConfigError(f"{prefix}{key} cannot be resolved ({first_line(error)}); give it a value") from None
        key = prefix + key
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


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def check_launch(config: DictConfig, rules: dict[str, Rule] | None) -> None:
    """What Hydra composed, checked before Hydra writes anything or imports the task: keys a `+` added that nothing
    reads, interpolations that expand beyond reason, environment variables a config may not set; then, for a
    single run (`rules`; a sweep's members are checked as each starts), keys left mandatory, `_target_`s by name,
    every value by `rules`, and digit strings as they were typed."""
    check_added_keys(config)
    check_expansion(config)
    check_env_set(config)
    check_job_logging(config)
    if rules is None:
        return
    task = OmegaConf.masked_copy(config, [key for key in config if key != "hydra"])
    check_mandatory(task)
    check_targets_by_name(task)
    check_config(task, rules)
    check_typed_digits(config)


def check_targets_by_name(task: DictConfig) -> None:
    """Every `_target_` of the config by name (cvae.trust.check_target_name), before torch: those written in it and
    those a value's interpolation would produce (`${oc.create:{_target_: ...}}`); whether each is a class is
    checked where it is built (cvae.trust.instantiate)."""
    written = OmegaConf.to_container(task, resolve=False)
    for key, target in targets_in(written):
        resolved = OmegaConf.select(task, key, throw_on_resolution_failure=False) if "${" in target else target
        check_target_name(str(resolved), key)
    for key in leaves(written):
        value = lookup(written, key)
        if isinstance(value, str) and "${" in value:
            made = OmegaConf.select(task, key, throw_on_resolution_failure=False)
            if OmegaConf.is_config(made) or isinstance(made, dict | list):
                made = OmegaConf.to_container(made, resolve=True) if OmegaConf.is_config(made) else made
                for inner, target in targets_in(plain(made, key)):
                    check_target_name(target, f"{key}.{inner}")


def typed_overrides(config: DictConfig) -> list[str]:
    """The overrides as typed (not resolved: `lr=${oc.env:X}` is text here)."""
    overrides = OmegaConf.select(config, "hydra.overrides", default=None)
    return OmegaConf.to_container(overrides, resolve=False).get("task", []) if overrides is not None else []


def check_added_keys(config: DictConfig) -> None:
    """A top-level key that a `+key=value` added, which no code reads (`+latentdim=3` would train at latent_dim 2,
    as Hydra's own hint for a misspelt key leads to): refused, naming the nearest key this config knows."""
    groups = set(OmegaConf.select(config, "hydra.runtime.choices", default={}) or {})
    for override in typed_overrides(config):
        if not override.startswith("+"):
            continue
        key = override.lstrip("+").partition("=")[0]
        if "." in key or "@" in key or key in groups or key == "hydra":
            continue
        known = [name for name in config if name != key and name != "hydra"]
        nearest = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        fix = f"did you mean {nearest[0]}=...?" if nearest else f"the known keys are {', '.join(known)}"
        raise ConfigError(f"{key} is not a key of this config, and nothing would read it; {fix}")


REFERENCE = re.compile(r"\$\{([^${}:]+)\}")


def check_expansion(config: DictConfig) -> None:
    """Each string's length once its interpolations are expanded, counted without expanding them: nested
    references multiply (nine lines of ten references each are 10^9 characters, minutes inside OmegaConf)."""
    plain = OmegaConf.to_container(config, resolve=False)
    plain.pop("hydra", None)
    sizes: dict[str, int] = {}

    def size(key: str, depth: int = 0) -> int:
        if key in sizes or depth > 50:
            return sizes.get(key, 0)
        sizes[key] = 0  # a cycle counts nothing: OmegaConf names it
        value = lookup(plain, key)
        text = value if isinstance(value, str) else str(value)
        references = REFERENCE.findall(text) if isinstance(value, str) else []
        sizes[key] = len(REFERENCE.sub("", text)) + sum(size(reference.strip(), depth + 1) for reference in references)
        if sizes[key] > MAX_EXPANDED:
            raise ConfigError(
                f"{key} expands to about {sizes[key]:.2g} characters through its interpolations, beyond the "
                f"{MAX_EXPANDED:,} allowed; simplify the interpolations"
            )
        return sizes[key]

    for key in leaves(plain):
        size(key)


def lookup(plain, key: str):
    node = plain
    for part in key.split("."):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return ""
    return node


def leaves(node, prefix: str = ""):
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for name, value in items:
        key = f"{prefix}{name}"
        if isinstance(value, (dict, list)):
            yield from leaves(value, key + ".")
        else:
            yield key


def check_env_set(config: DictConfig) -> None:
    """hydra.job.env_set: only ENV_SET_ALLOWED. Hydra sets these for the job, and everything the project starts
    (git, DDP ranks, launchers) inherits them."""
    env_set = OmegaConf.select(config, "hydra.job.env_set", default=None) or {}
    refused = sorted(str(name) for name in env_set if name not in ENV_SET_ALLOWED)
    if refused:
        raise ConfigError(
            f"hydra.job.env_set.{refused[0]} may not be set by a config (it could run code); set it in your shell, "
            f"or use one of {', '.join(ENV_SET_ALLOWED)}"
        )


def check_job_logging(config: DictConfig) -> None:
    """hydra.job_logging, which Hydra hands to logging.config.dictConfig when the job starts: a handler's `class`
    or a factory's `()` may name the logging package's classes and Hydra's list, nothing else (a method there
    would run with the file's arguments)."""
    logging_config = OmegaConf.select(config, "hydra.job_logging", default=None)
    if logging_config is None:
        return
    plain = OmegaConf.to_container(logging_config, resolve=False)
    for key in leaves(plain):
        if key.rpartition(".")[2] in ("()", "class"):
            target = str(lookup(plain, key))
            if not target.startswith("logging.") and target not in HYDRA_TARGETS:
                raise ConfigError(
                    f"hydra.job_logging.{key}={target} is not on the execution whitelist: a logging config may name "
                    f"the logging package's classes only (docs/trust.md)"
                )


def check_mandatory(cfg: DictConfig) -> None:
    """Keys the config leaves for the command line (??? in the YAML) that it did not get. Read from the config as
    written (OmegaConf.missing_keys would resolve every interpolation first: minutes for a crafted one)."""
    plain = OmegaConf.to_container(cfg, resolve=False)
    missing = [key for key in leaves(plain) if lookup(plain, key) == "???"]
    if missing:
        key = sorted(missing)[0]
        raise ConfigError(f"{key} is required: pass {key}={MANDATORY_EXAMPLES.get(key, '<value>')}")


def check_typed_digits(config: DictConfig) -> None:
    """digits and digit as typed: Hydra reads digits=1_000 as the number 1000, drawing "1000"."""
    for override in typed_overrides(config):
        key, _, value = override.lstrip("+~").partition("=")
        if key in ("digits", "digit") and value and value != "null":
            (parse_digits if key == "digits" else parse_digit)(value.strip("'\""), key)
