"""A run's hyperparameters and final metrics as every logger gets them, so that a sweep reads at a glance: the
mission's knobs first, then the run's overrides, then the rest; each knob once; no path climbing out of the project
(docs/outputs.md, HPARAMS)."""

import os
import re
from collections.abc import Collection

from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import Logger, TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard.summary import hparams as hparams_summaries
from torch.utils.tensorboard.writer import SummaryWriter

from cvae.loggers import FINAL_METRICS
from cvae.loggers.tensorboard import tensorboard_tag

KNOB_KEYS = ("latent_dim", "batch_size", "lr", "seed", "model", "data", "trainer")
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
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            add_tensorboard_hparams(logger, hparams, final, mission.keys(), step)
        else:
            logger.log_hyperparams(hparams)
            logger.log_metrics({f"final/{name}": value for name, value in final.items()}, step=step)
            logger.save()  # after the trainer's last save: a CSVLogger writes its rows only when saved


def add_tensorboard_hparams(
    logger: TensorBoardLogger, hparams: dict, final: dict, marked: Collection[str], step: int
) -> None:
    """The HPARAMS tab's three summaries, the `marked` knobs as differing: TensorBoard lists those first and
    ticks them (Lightning's log_hyperparams cannot mark them). They and the final figures go into the BEST_RUN
    sub-run, the session whose metric columns read them: a metric of another run (a MetricName group) is not found
    when TensorBoard's logdir is the run dir itself (TensorBoard 2.21 looks for run `./best`, not `best`)."""
    logger.log_hyperparams(hparams)  # into hparams.yaml only: without metrics Lightning writes no summary
    charted = {tensorboard_tag(name): name for name in final}
    charted.pop(None, None)  # test figures: not charted (metrics.json has them)
    # TensorBoard prints every number to 5 significant digits (batch_size 128.00): integers and lists go as text
    shown = {key: value if isinstance(value, bool | float | str) else str(value) for key, value in hparams.items()}
    summaries = hparams_summaries(shown, {tag: final[name] for tag, name in charted.items()})
    content = summaries[0].value[0].metadata.plugin_data  # the experiment's, of experiment, session start and end
    plugin_data = HParamsPluginData.FromString(content.content)
    for info in plugin_data.experiment.hparam_infos:
        info.differs = info.name in marked
    for info in plugin_data.experiment.metric_infos:
        info.display_name = charted[info.name.tag]
    content.content = plugin_data.SerializeToString()
    with SummaryWriter(os.path.join(logger.log_dir, BEST_RUN)) as best:
        for tag, name in charted.items():
            best.add_scalar(tag, final[name], step)
        # the SummaryWriter has no public call that takes a prebuilt summary: its file writer does
        for summary in summaries:
            best.file_writer.add_summary(summary)
    logger.save()


def mission_knobs(cfg: DictConfig) -> dict:
    """latent_dim, batch_size, lr, and the net and sampler options (Hydra's group choices; without Hydra the
    network's and the sampler's class). TensorBoard's HPARAMS tab ticks the first five hparams marked as differing
    (seen in a browser): these five alone are marked, so they are the ticked columns of every run."""
    choices = HydraConfig.get().runtime.choices if HydraConfig.initialized() else {}
    sampler = choices.get("sampler") or OmegaConf.select(cfg, "sampler._target_", default="prior").rsplit(".")[-1]
    net = choices.get("net") or OmegaConf.select(cfg, "model.net._target_", default="").rsplit(".")[-1]
    knobs = {"latent_dim": cfg.latent_dim, "batch_size": cfg.batch_size, "lr": cfg.lr, "net": net}
    return {**knobs, "sampler": sampler}


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
