"""The hyperparameters every logger gets: the mission's knobs first, then the run's overrides, each knob once, no
path climbing out of the project, and the final metrics of metrics.json as the metric columns (read back from
TensorBoard's HPARAMS summaries)."""

import json
import os

import pytest
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from cvae.loggers.hparams import knobs, mission_knobs, project_path, swept_knobs
from tests.conftest import QUICK_RUN, compose_config

# keys that only repeat another key (${batch_size}, ${latent_dim}, ${lr}, ${seed}, ${paths.output_dir})
COPIES = ("data/batch_size", "model/latent_dim", "model/optimizer/lr", "data/shuffle_seed", "trainer/default_root_dir")


MISSION = ["latent_dim", "batch_size", "lr", "net", "sampler"]


def as_shown(path: str) -> str:
    """Relative to the project root inside it, else the path itself with the home dir as ~."""
    relative = os.path.relpath(path, os.path.abspath(os.environ.get("PROJECT_ROOT", ".")))
    home = os.path.expanduser("~")
    outside = path.replace(home + os.sep, "~" + os.sep, 1) if path.startswith(home + os.sep) else path
    return outside if relative.startswith("..") else relative


def test_hparams_tab_lists_the_overrides_first_each_knob_once_with_the_final_metrics(trained_run, data_dir):
    output_dir, _ = trained_run
    events = EventAccumulator(str(output_dir / "best"), size_guidance={"scalars": 0}).Reload()  # HPARAMS's session
    summaries = {
        tag: HParamsPluginData.FromString(content) for tag, content in events.PluginTagToContent("hparams").items()
    }
    # every logger's knobs in their order: hparams.yaml (TensorBoard's session holds them too, its table lists two)
    names = list(yaml.safe_load((output_dir / "hparams.yaml").read_text()))
    overridden = [override.split("=")[0].replace(".", "/") for override in QUICK_RUN] + ["data/data_dir"]
    first = MISSION + overridden  # latent_dim=3 was overridden too: it keeps its mission place
    assert names[: len(first)] == first, "the mission's knobs, then the command line's, in its order"
    assert len(names) == len(set(names)) and not set(COPIES) & set(names)
    assert {"batch_size", "lr", "seed", "model/beta", "data/eval_batch_size", "global_batch_size"} <= set(names)
    infos = summaries["_hparams_/experiment"].experiment.hparam_infos
    assert [info.name for info in infos] == MISSION[:2], "the table's knob columns: two, with its metrics in view"
    values = summaries["_hparams_/session_start_info"].session_start_info.hparams
    assert set(values) == set(names)
    assert values["data/data_dir"].string_value == as_shown(data_dir)
    assert (values["net"].string_value, values["sampler"].string_value) == ("mlp", "prior")
    assert not any(value.string_value.startswith("..") for value in values.values()), "none climbs out"
    metrics = json.loads((output_dir / "metrics.json").read_text())
    columns = summaries["_hparams_/experiment"].experiment.metric_infos
    assert [column.display_name for column in columns] == ["val/nelbo", "val/fid", "val/label_acc"]
    for column in columns:  # read from the session's own run, the `best` sub-run
        assert not column.name.group
        assert events.Scalars(column.name.tag)[-1].value == pytest.approx(metrics[column.display_name], rel=1e-6)


def test_a_key_set_on_its_own_is_a_knob_and_a_group_option_shows_as_typed(tmp_path):
    overrides = [
        "batch_size=64",
        "logger=[tensorboard,csv]",
        "data.eval_batch_size=500",
        "net=conv",
        "model.net.hidden_dims=[64,32]",
    ]
    cfg = compose_config("train", overrides, tmp_path)
    assert swept_knobs(cfg) == {
        "batch_size": 64,
        "logger": "[tensorboard,csv]",
        "net": "conv",  # a group option whose config sits elsewhere (model.net)
        "data/eval_batch_size": 500,
        "model/net/hidden_dims": [64, 32],
    }
    assert "data/batch_size" not in knobs(cfg), "a copy of batch_size"
    assert {"net": "conv", "sampler": "prior"}.items() <= mission_knobs(cfg).items()
    overridden = compose_config("train", ["data.batch_size=32"], tmp_path)
    assert knobs(overridden)["data/batch_size"] == 32 and knobs(overridden)["batch_size"] == 128, "no copy any more"


def test_paths_inside_the_project_are_relative_and_outside_ones_never_climb_out(tmp_path):
    home = os.path.expanduser("~")
    assert project_path("/project/outputs/run", "/project") == "outputs/run"
    assert project_path("/shared/data", "/project") == "/shared/data"
    assert project_path(os.path.join(home, "mnist"), "/project") == "~/mnist"
