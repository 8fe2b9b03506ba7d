"""The trust boundary's first rule, where every route passes (cvae.trust.instantiate): code runs only from classes of
trusted packages, checked after the config is resolved, so that no resolver, list, `_partial_` or nested node hides
a target. Each route below plants the same function of the project (`cvae.files.write_json_atomic`, trusted by
package before this rule) that would write a file; the file never appears."""

import json
import os
import shutil

import pytest
from omegaconf import OmegaConf

from cvae.errors import ConfigError
from cvae.trust import instantiate, instantiate_group
from tests.conftest import QUICK_RUN, ROOT, compose_config
from tests.test_run_dirs import one_error_line
from tests.test_train import run_script

WRITER = "cvae.files.write_json_atomic"


def hidden(planted) -> str:
    """A resolver that makes a node naming WRITER when the config is resolved."""
    return f'${{oc.create:{{_target_: {WRITER}, path: "{planted}", data: {{a: 1}}}}}}'


ROUTES = {
    "resolver_in_a_value": lambda planted: [f"trainer.default_root_dir='{hidden(planted)}'"],
    "resolver_in_a_group_entry": lambda planted: [f"+callbacks.planted='{hidden(planted)}'"],
    "partial": lambda planted: [f"+callbacks.planted={{_target_: {WRITER}, _partial_: true, path: '{planted}'}}"],
    "in_a_list": lambda planted: [f"+trainer.plugins=[{{_target_: {WRITER}, path: '{planted}', data: {{}}}}]"],
    "nested": lambda planted: [f"+model.net.inner={{deeper: {{_target_: {WRITER}, path: '{planted}', data: {{}}}}}}"],
    "method_of_a_trusted_class": lambda planted: [
        "+callbacks.planted._target_=pytorch_lightning.callbacks.ModelCheckpoint.load_state_dict"
    ],
}


@pytest.mark.parametrize("route", ROUTES)
def test_no_route_builds_a_function(route, tmp_path):
    planted = tmp_path / "planted.json"
    cfg = compose_config("train", [*QUICK_RUN, *ROUTES[route](planted)], tmp_path / "run")
    with pytest.raises(ConfigError, match="is not a class|is not on the execution whitelist"):
        instantiate_group(cfg.callbacks)
        instantiate(cfg.model)
        instantiate(cfg.trainer)
    assert not planted.exists(), "the planted function ran"


def test_a_resolved_value_that_is_an_interpolation_is_refused_not_resolved_again(tmp_path):
    """A resolver returning text with `${...}` in it: Hydra would resolve that text when it builds the object."""
    OmegaConf.register_resolver("tests_text", lambda: "${oc.env:HOME}", replace=True)
    cfg = OmegaConf.create({"_target_": "pytorch_lightning.callbacks.ModelCheckpoint", "dirpath": "${tests_text:}"})
    with pytest.raises(ConfigError, match="holds an interpolation"):
        instantiate(cfg)


def test_a_resolver_hiding_a_function_in_an_experiment_file_is_one_line_and_writes_nothing(tmp_path, data_dir):
    """The tester's route, as a user would run it: an experiment on the search path whose value a resolver turns into
    a node that names a function of the project."""
    planted = tmp_path / "planted.json"
    experiment = tmp_path / "configs" / "experiment" / "shared.yaml"
    experiment.parent.mkdir(parents=True)
    experiment.write_text("# @package _global_\ntrainer:\n  default_root_dir: " + json.dumps(hidden(planted)) + "\n")
    result = run_script(
        "train.py",
        *QUICK_RUN,
        f"data.data_dir={data_dir}",
        f"hydra.searchpath=[file://{tmp_path / 'configs'}]",
        "experiment=shared",
        f"hydra.run.dir={tmp_path / 'run'}",
        env_extra={"CVAE_TRUSTED_TARGETS": ""},
    )
    assert f"{WRITER} is not a class" in one_error_line(result)
    assert not planted.exists(), "the planted function ran"


@pytest.mark.parametrize("route", ["override", "primary_config"])
def test_no_code_is_imported_from_a_run_dir(route, tmp_path):
    """A search path naming a run dir as a package (pkg://outputs.<run>): Hydra imports its __init__.py while it
    composes the config, before any check of the config could run. A run dir is data: no code is imported from it
    (cvae.trust.NoCodeFromRunDirs, first on sys.meta_path in the entry points)."""
    name = f"planted_{route}_{os.getpid()}"
    planted, marker = ROOT / "outputs" / name, tmp_path / "imported"
    (planted / ".hydra").mkdir(parents=True)
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    search = f"hydra.searchpath=[pkg://outputs.{name}]"
    if route == "override":
        args = [search]
    else:
        primary = tmp_path / "configs" / "primary.yaml"
        primary.parent.mkdir()
        primary.write_text(f"defaults:\n  - train\n  - _self_\nhydra:\n  searchpath: [pkg://outputs.{name}]\n")
        args = ["--config-dir", str(primary.parent), "--config-name", "primary"]
    try:
        result = run_script("train.py", *args, f"hydra.run.dir={tmp_path / 'run'}")
    finally:
        shutil.rmtree(planted)
    assert not marker.exists(), "code was imported from a run dir"
    assert f"outputs.{name} lies in a run dir" in one_error_line(result)
    assert not (tmp_path / "run").exists()
