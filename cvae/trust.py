"""The trust boundary (docs/trust.md): a config builds only classes of trusted packages (`instantiate`), a file
holds only `plain` values, and a config file's demands on other processes are checked at launch (`check_config_file`).
Torch-free: the entry points run check_config_file before they import torch."""

import fnmatch
import functools
import importlib.machinery
import importlib.util
import inspect
import os
import re
import sys
from pathlib import Path

from hydra.errors import CompactHydraException, InstantiationException
from hydra.utils import get_object
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from cvae.errors import ConfigError, UsageError

# packages whose classes a config may name
TRUSTED_PACKAGES = (
    *("cvae.*", "torch.optim.*", "pytorch_lightning.Trainer", "lightning.pytorch.Trainer", "optuna.pruners.*"),
    *(
        f"{pl}.{part}.*"
        for pl in ("pytorch_lightning", "lightning.pytorch")
        for part in ("callbacks", "loggers", "profilers")
    ),
)
# the user's own code, named in the shell, which no config can change: `mypkg.*` or full names
USER_TARGETS = tuple(name.strip() for name in os.environ.get("CVAE_TRUSTED_TARGETS", "").split(",") if name.strip())
# what Hydra builds itself (hydra.callbacks, hydra/launcher, hydra/sweeper and its sampler), by full name: Hydra
# checks each name as it builds it, and cannot tell a class from a method, so no pattern here but the user's own
HYDRA_TARGETS = [
    *("cvae.run.resolvers.Resolvers", "cvae.run.sweep.SweepSummary", "cvae.run.cli.RunDirCheck"),
    *(f"hydra_plugins.hydra_submitit_launcher.submitit_launcher.{kind}" for kind in ("SlurmLauncher", "LocalLauncher")),
    "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher",
    "cvae.search.sweeper.OptunaStudySweeper",
    "hydra_plugins.hydra_ray_launcher.ray_launcher.RayLauncher",
    *(f"optuna.samplers.{kind}" for kind in ("TPESampler", "RandomSampler", "GridSampler", "CmaEsSampler")),
    *USER_TARGETS,
]
# a file's plain values: at most this many entries and characters (a recorded network has about ten)
MAX_ENTRIES = 10_000
MAX_CHARACTERS = 100_000
MAX_EXPANDED = 1_000_000  # characters a config string may expand to through interpolations
# the variables a config's hydra.job.env_set may set: what the project's code, torch and the trackers read. Nothing
# else: GIT_CONFIG_*, LD_PRELOAD, PYTHON* ... would run code in every process the run starts.
ENV_SET_ALLOWED = (
    *("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTORCH_CUDA_ALLOC_CONF"),
    *("NCCL_DEBUG", "WANDB_MODE", "WANDB_PROJECT", "MLFLOW_EXPERIMENT_NAME", "TORCH_HOME", "CVAE_DATA_DIR"),
)
REFERENCE = re.compile(r"\$\{([^${}:]+)\}")


def instantiate(node: DictConfig, **kwargs):
    """hydra.utils.instantiate of the node's resolved, plain values, each `_target_` checked first (check_target);
    `kwargs` (objects the code passes, never config) go to the top-level target as they are."""
    try:
        values = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except OmegaConfBaseException as error:
        raise ConfigError(f"the config cannot be resolved ({first_line(error)}); fix or remove that value") from None
    targets = sorted({check_target(target, key) for key, target in targets_in(plain(values, "config"))})
    try:
        return hydra_instantiate(values, _execution_whitelist_=targets or None, **kwargs)
    except UsageError:
        raise
    except Exception as error:  # a component's own check of its arguments (Lightning's, torch's): bad input
        if isinstance(error, InstantiationException) and "execution whitelist" in str(error):
            raise untrusted(first_line(error)) from None
        cause = (error.__cause__ or error) if isinstance(error, InstantiationException) else error
        if isinstance(cause, UsageError):
            raise cause from error
        what = values.get("_target_", "the config")  # in one line; HYDRA_FULL_ERROR=1 shows the traceback
        raise ConfigError(f"{what} refused its arguments: {first_line(cause)}") from error


def targets_in(values, key: str = ""):
    """(key, target) of every `_target_` in plain values, at any depth."""
    items = values.items() if isinstance(values, dict) else enumerate(values) if isinstance(values, list) else ()
    for name, child in items:
        if name == "_target_":
            yield f"{key}_target_", str(child)
        else:
            yield from targets_in(child, f"{key}{name}.")


def check_target_name(target: str, key: str) -> str:
    """By name, without importing anything: a trusted pattern, and the package it names installed."""
    if not any(fnmatch.fnmatchcase(target, pattern) for pattern in (*TRUSTED_PACKAGES, *USER_TARGETS)):
        raise untrusted(f"{key}={target} is not on the execution whitelist")
    package = target.partition(".")[0]
    if importlib.util.find_spec(package) is None:  # e.g. lightning.pytorch.* where only pytorch_lightning is
        raise ConfigError(
            f"{key}={target} needs the {package} package, which is not installed: install it, or name a class of "
            f"an installed package (pytorch_lightning.* for lightning.pytorch.*)"
        )
    return target


def check_target(target: str, key: str) -> str:
    """A trusted name that is a class: a function or a method of a trusted package (a loader that unpickles a file)
    is refused. Importing it runs only the installed module that defines it."""
    check_target_name(target, key)
    try:
        resolved = get_object(target)
    except Exception:
        raise ConfigError(f"{key}={target} cannot be found; check the spelling of the class's full name") from None
    if not inspect.isclass(resolved) and target not in USER_TARGETS:  # a full name in the shell: that callable
        raise untrusted(f"{key}={target} is not a class: a config may name a trusted package's classes, no function")
    return target


def untrusted(what: str) -> ConfigError:
    return ConfigError(
        f"{what} (trusted: classes of {', '.join(TRUSTED_PACKAGES)}); to use your own code, export "
        f"CVAE_TRUSTED_TARGETS=<package>.* (docs/trust.md)"
    )


def plain(values, what: str):
    """The values if plain (strings, numbers, booleans, null, lists and mappings of them, bounded, no `${`), else a
    ConfigError naming the first that is not; also every resolved config, whose `${` text Hydra would resolve."""
    budget = {"entries": MAX_ENTRIES, "characters": MAX_CHARACTERS}

    def visit(value, key: str) -> None:
        budget["entries"] -= 1
        if isinstance(value, str):
            budget["characters"] -= len(value)
            if "${" in value:
                raise ConfigError(f"{what} {key}={value[:80]!r} holds an interpolation; {what} is read as plain values")
        elif isinstance(value, dict):
            for name, child in value.items():
                if not isinstance(name, str):
                    raise ConfigError(f"{what} {key} has a key {name!r} that is no string")
                visit(name, key)
                visit(child, f"{key}.{name}" if key else name)
        elif isinstance(value, (list, tuple)):
            for index, child in enumerate(value):
                visit(child, f"{key}[{index}]")
        elif value is not None and not isinstance(value, (bool, int, float)):
            raise ConfigError(f"{what} {key} holds a {type(value).__name__}, not a plain value")
        if budget["entries"] < 0 or budget["characters"] < 0:
            raise ConfigError(f"{what} is larger than {MAX_ENTRIES:,} entries or {MAX_CHARACTERS:,} characters")

    visit(values, "")
    return values


def first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def instantiate_group(group: DictConfig | None) -> list:
    """Objects of a config group whose entries each hold a `_target_` (callbacks, loggers)."""
    if not group:
        return []
    return [instantiate(entry) for entry in group.values() if isinstance(entry, DictConfig) and "_target_" in entry]


def check_config_file(config: DictConfig) -> None:
    """What a composed config (any file on the search path) asks of other processes, before Hydra acts on it: its
    expanded size, hydra.job.env_set and job_logging, its targets by name (whether each is a class: as it is built)."""
    plain_config = OmegaConf.to_container(config, resolve=False)
    check_expansion({key: value for key, value in plain_config.items() if key != "hydra"})
    hydra = plain_config.get("hydra") or {}
    # env_set: Hydra sets them for the job; git, DDP ranks and launchers inherit them
    refused = sorted(str(name) for name in (hydra.get("job") or {}).get("env_set") or {} if name not in ENV_SET_ALLOWED)
    if refused:
        raise ConfigError(
            f"hydra.job.env_set.{refused[0]} may not be set by a config (it could run code); set it in your shell, "
            f"or use one of {', '.join(ENV_SET_ALLOWED)}"
        )
    # job_logging goes to logging.config.dictConfig: a handler's `class` or a factory's `()` naming a method would
    # run it, so only the logging package's classes and HYDRA_TARGETS
    for key, target in leaves(hydra.get("job_logging") or {}):
        if key.rpartition(".")[2] in ("()", "class") and not str(target).startswith("logging."):
            if target not in HYDRA_TARGETS:
                raise ConfigError(
                    f"hydra.job_logging.{key}={target} is not on the execution whitelist: a logging config may name "
                    f"the logging package's classes only (docs/trust.md)"
                )
    check_targets_by_name(OmegaConf.masked_copy(config, [key for key in config if key != "hydra"]))


def check_targets_by_name(task: DictConfig) -> None:
    """Every `_target_` by name (check_target_name): those written in the config and those an interpolation would
    produce (`${oc.create:{_target_: ...}}`)."""
    for key, value in leaves(OmegaConf.to_container(task, resolve=False)):
        made = OmegaConf.select(task, key, throw_on_resolution_failure=False) if "${" in str(value) else value
        if key.endswith("_target_"):
            check_target_name(str(made), key)
        elif OmegaConf.is_config(made) or isinstance(made, dict | list):
            made = OmegaConf.to_container(made, resolve=True) if OmegaConf.is_config(made) else made
            for inner, target in targets_in(plain(made, key)):
                check_target_name(target, f"{key}.{inner}")


def check_expansion(written: dict) -> None:
    """Each string's length once its interpolations are expanded, counted without expanding them: nested
    references multiply (nine lines of ten references each are 10^9 characters, minutes inside OmegaConf)."""
    values, sizes = dict(leaves(written)), {}

    def size(key: str, depth: int = 0) -> int:
        if key in sizes or depth > 50:
            return sizes.get(key, 0)
        sizes[key] = 0  # a cycle counts nothing: OmegaConf names it
        text = str(values.get(key, ""))
        references = REFERENCE.findall(text) if isinstance(values.get(key), str) else []
        sizes[key] = len(REFERENCE.sub("", text)) + sum(size(reference.strip(), depth + 1) for reference in references)
        if sizes[key] > MAX_EXPANDED:
            raise ConfigError(
                f"{key} expands to about {sizes[key]:.2g} characters through its interpolations, beyond the "
                f"{MAX_EXPANDED:,} allowed; simplify the interpolations"
            )
        return sizes[key]

    for key in values:
        size(key)


def leaves(node, prefix: str = ""):
    """(dotted key, value) of every leaf of plain values."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for name, value in items:
        if isinstance(value, (dict, list)):
            yield from leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


class RunDirImport(ImportError, CompactHydraException):
    """Compact: Hydra, which imports a `pkg://` search path as it composes, reports it in one line."""


class NoCodeFromRunDirs:
    """First on sys.meta_path: refuses a module whose file lies in a run or sweep dir (a folder holding .hydra/ or
    multirun.yaml, or below one), whoever names it: a `pkg://` search path, a `cvae/__init__.py` planted where a
    process starts. It finds nothing itself: the regular finders import what it lets through."""

    def find_spec(self, name: str, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        folders = [] if spec is None else list(spec.submodule_search_locations or [])
        if spec is not None and spec.has_location and spec.origin:
            folders.append(os.path.dirname(spec.origin))
        for folder in folders:
            if in_run_dir(os.path.realpath(folder)):
                raise RunDirImport(f"error: {name} lies in a run dir ({folder}): a run dir is data, never imported")
        return None


@functools.lru_cache(maxsize=4096)
def in_run_dir(folder: str) -> bool:
    if (Path(folder) / ".hydra").is_dir() or (Path(folder) / "multirun.yaml").is_file():
        return True
    parent = os.path.dirname(folder)
    return parent != folder and in_run_dir(parent)


def import_no_code_from_run_dirs() -> None:
    if not any(isinstance(finder, NoCodeFromRunDirs) for finder in sys.meta_path):
        sys.meta_path.insert(0, NoCodeFromRunDirs())
