"""A run's hyperparameters and final metrics as every logger gets them, so that a sweep reads at a glance: the
mission's knobs first, then the run's overrides, then the rest; each knob once; no path climbing out of the project
(docs/outputs.md, HPARAMS). TensorBoard's HPARAMS table shows the knobs the sweep varies, its metrics in view."""

import os
import re
from collections.abc import Collection
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams as hparams_summaries
from torch.utils.tensorboard.writer import SummaryWriter

from cvae.files import TYPED_PATH_KEYS
from cvae.loggers import FINAL_METRICS
from cvae.loggers.tensorboard import tensorboard_tag

KNOB_KEYS = ("latent_dim", "batch_size", "lr", "seed", "model", "data", "trainer")
# paths a user types, relative to where the command ran, as hparam names
TYPED_PATHS = tuple(key.replace(".", "/") for key in TYPED_PATH_KEYS)
# TensorBoard 2.21's HPARAMS table gives each column 10em (160 px) whatever its name, after Trial ID (10em) and Show
# Metrics (100 px), and ticks the first five hparams of its list: in a 1,400 px window (its left panel takes 284 px)
# five such columns fit, the three metrics and two knobs. So its list holds two knobs, or the sweep's varied ones
HPARAMS_COLUMNS = 2
# a value that is nothing but a reference to another key, e.g. ${batch_size}: a copy, not a knob
COPY_OF_KEY = re.compile(r"^\$\{[\w.]+\}$")


# TensorBoard's sub-run holding the final figures under the tags of the curves (a point on the val/nelbo chart, not a
# chart of its own ahead of the curves), where HPARAMS's metric columns read them
BEST_RUN = "best"


@rank_zero_only
def log_final(loggers: list[Logger], cfg: DictConfig, metrics: dict, extra: dict, step: int) -> None:
    """Every logger gets the run's hyperparameters (with `extra`, figures known after the run) and final metrics."""
    mission = mission_knobs(cfg)
    first = {**mission, **swept_knobs(cfg)}
    hparams = {**first, **{key: value for key, value in knobs(cfg).items() if key not in first}, **extra}
    final = {name: metrics[name] for name in FINAL_METRICS if name in metrics}
    varied = [name for name in varied_knobs() if name in hparams]
    columns = [*varied, *(name for name in mission if name not in varied)][: max(HPARAMS_COLUMNS, len(varied))]
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            add_tensorboard_hparams(logger, hparams, final, columns, varied, step)
        else:
            logger.log_hyperparams(hparams)
            logger.log_metrics({f"final/{name}": value for name, value in final.items()}, step=step)
            logger.save()  # after the trainer's last save: a CSVLogger writes its rows only when saved


def add_tensorboard_hparams(
    logger: TensorBoardLogger, hparams: dict, final: dict, columns: list[str], varied: Collection[str], step: int
) -> None:
    """The HPARAMS tab's three summaries: the session holds every knob, the experiment lists the `columns` alone (the
    table's columns: TensorBoard ticks the first five of that list), the `varied` ones marked as differing. They and
    the final figures go into the BEST_RUN sub-run, the session whose metric columns read them: a metric of another run
    (a MetricName group) is not found when TensorBoard's logdir is the run dir itself (TensorBoard 2.21 looks for run
    `./best`, not `best`)."""
    logger.log_hyperparams(hparams)  # into hparams.yaml only: without metrics Lightning writes no summary
    charted = {tensorboard_tag(name): name for name in final}
    charted.pop(None, None)  # test figures: not charted (metrics.json has them)
    # TensorBoard prints every number to 5 significant digits (batch_size 128.00): integers and lists go as text
    shown = {key: value if isinstance(value, bool | float | str) else str(value) for key, value in hparams.items()}
    figures = {tag: final[name] for tag, name in charted.items()}
    experiment = hparams_summaries({key: shown[key] for key in columns}, figures)[0]
    _, session_start, session_end = hparams_summaries(shown, figures)
    content = experiment.value[0].metadata.plugin_data
    plugin_data = HParamsPluginData.FromString(content.content)
    for info in plugin_data.experiment.hparam_infos:
        info.differs = info.name in varied
    for info in plugin_data.experiment.metric_infos:
        info.display_name = charted[info.name.tag]
    content.content = plugin_data.SerializeToString()
    with SummaryWriter(os.path.join(logger.log_dir, BEST_RUN)) as best:
        for tag, value in figures.items():
            best.add_scalar(tag, value, step)
        # the SummaryWriter has no public call that takes a prebuilt summary: its file writer does
        for summary in (experiment, session_start, session_end):
            best.file_writer.add_summary(summary)
    logger.save()


def mission_knobs(cfg: DictConfig) -> dict:
    """latent_dim, batch_size, lr, and the net and sampler options (Hydra's group choices; without Hydra the
    network's and the sampler's class)."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    sampler = choices.get("sampler") or OmegaConf.select(cfg, "sampler._target_", default="prior").rsplit(".")[-1]
    net = choices.get("net") or OmegaConf.select(cfg, "model.net._target_", default="").rsplit(".")[-1]
    knobs = {"latent_dim": cfg.latent_dim, "batch_size": cfg.batch_size, "lr": cfg.lr, "net": net}
    return {**knobs, "sampler": sampler}


def varied_knobs() -> list[str]:
    """The knobs this run's sweep gives several values (as hparam names: model/beta), in the sweep's order; none
    outside a sweep. A member's own overrides hold one value each, so the sweep is read as it was launched: Hydra's
    sweeper params (Optuna's search space) and the command line's `key=a,b` (saved by Hydra's basic sweeper in the
    sweep dir's multirun.yaml)."""
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return []
    hydra = HydraConfig.get()
    launched = Path(hydra.runtime.cwd, str(hydra.sweep.dir), "multirun.yaml")
    if launched.is_file():  # as data: its interpolations (the sweep dir's ${now:...}) are not resolved again
        hydra = OmegaConf.to_container(OmegaConf.load(launched), resolve=False)["hydra"]
    else:
        hydra = OmegaConf.to_container(hydra, resolve=False)
    params = (hydra.get("sweeper") or {}).get("params") or {}
    overrides = [*(f"{key}={value}" for key, value in params.items()), *hydra["overrides"]["task"]]
    return sweep_keys(overrides)


def sweep_keys(overrides: list[str]) -> list[str]:
    """The keys of the overrides that sweep (a,b; range(...); choice(...); interval(...)), as hparam names."""
    keys = (o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if o.is_sweep_override())
    return list(dict.fromkeys(key.replace(".", "/") for key in keys if not key.startswith("hydra")))


def swept_knobs(cfg: DictConfig) -> dict:
    """The keys this run's command line set (Hydra's task overrides) with the values the run used; one that set
    a whole config (a group option: `logger=many_loggers`, `logger=[tensorboard,mlflow]`) as it was typed."""
    if not HydraConfig.initialized():  # train() called without Hydra, e.g. from a script
        return {}
    swept, choices = {}, HydraConfig.get().runtime.choices
    for override in OverridesParser.create().parse_overrides(list(HydraConfig.get().overrides.task)):
        key, value = override.key_or_group, OmegaConf.select(cfg, override.key_or_group)
        if override.is_delete() or key.startswith("hydra") or (value is None and key not in choices):
            continue
        if key in choices or OmegaConf.is_dict(value):  # a group option (net=conv: its config sits at model.net)
            swept[key] = override.get_value_element_as_str()
        else:
            swept.update(flatten(key.replace(".", "/"), plain(value), cfg.paths.root_dir))
    return swept


def knobs(cfg: DictConfig) -> dict:
    """The settings that tell runs apart, flat (`model/beta`): no Hydra `_target_`-style keys, no copies of
    other keys."""
    flat = {}
    for key in KNOB_KEYS:
        if key in cfg:
            flat.update(flatten(key, plain(cfg[key]), cfg.paths.root_dir, plain(cfg[key], resolve=False)))
    return flat


def plain(value, resolve: bool = True):
    return OmegaConf.to_container(value, resolve=resolve) if OmegaConf.is_config(value) else value


def flatten(name: str, value, root_dir: str, unresolved=None) -> dict:
    """`name/key/...` entries of a value: copies of other keys (seen in the unresolved value) left out,
    absolute paths made relative to root_dir."""
    if isinstance(value, dict):
        unresolved = unresolved if isinstance(unresolved, dict) else {}
        return {
            flat_key: flat_value
            for key, item in value.items()
            if not key.startswith("_")
            for flat_key, flat_value in flatten(f"{name}/{key}", item, root_dir, unresolved.get(key)).items()
        }
    if isinstance(unresolved, str) and COPY_OF_KEY.match(unresolved):
        return {}
    if isinstance(value, str) and value and name in TYPED_PATHS:
        # from where the command ran (as the data module reads it, ~ too): ../shared/data said nothing of where
        value = os.path.normpath(to_absolute_path(os.path.expanduser(value)))
    if isinstance(value, str) and os.path.isabs(value):
        value = project_path(value, root_dir)
    return {name: value}


def project_path(path: str, root_dir: str) -> str:
    """Inside the project: relative to its root. Outside: the path itself (`../../` would only say "somewhere
    else"), the home dir as ~."""
    relative = os.path.relpath(path, os.path.abspath(root_dir))
    if relative != os.pardir and not relative.startswith(os.pardir + os.sep):
        return relative
    home = os.path.expanduser("~")
    return "~" + path[len(home) :] if path.startswith(home + os.sep) else path
