"""Exact reproducibility on CPU: the same config and seed give a byte-identical metrics.json; a run stopped after
its first epoch and resumed from last.ckpt ends exactly as an uninterrupted run; a run dir records what it ran on."""

import json
import re
from pathlib import Path

import pytest

from cvae.training import train
from tests.conftest import QUICK_RUN, compose_config

QUICK = [*QUICK_RUN, "trainer.limit_test_batches=2", "latent_dim=3"]  # two epochs


def run(output_dir: Path, data_dir: str, *overrides: str) -> Path:
    train(compose_config("train", [*QUICK, f"data.data_dir={data_dir}", *overrides], output_dir))
    return output_dir


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir) -> Path:
    return run(tmp_path_factory.mktemp("uninterrupted"), data_dir)


def test_same_config_and_seed_give_identical_metrics(uninterrupted, tmp_path, data_dir):
    again = run(tmp_path, data_dir)
    assert (again / "metrics.json").read_bytes() == (uninterrupted / "metrics.json").read_bytes()


def test_resumed_run_ends_as_the_uninterrupted_one(uninterrupted, tmp_path, data_dir):
    run(tmp_path, data_dir, "trainer.max_epochs=1")  # stopped after epoch 1
    run(tmp_path, data_dir, f"ckpt_path={tmp_path / 'checkpoints' / 'last.ckpt'}")  # resumed, in its own dir
    resumed = json.loads((tmp_path / "metrics.json").read_text())
    assert resumed["epochs"] == 2
    assert (tmp_path / "metrics.json").read_bytes() == (uninterrupted / "metrics.json").read_bytes()


def test_run_dir_records_versions_commit_and_timing(uninterrupted):
    environment = json.loads((uninterrupted / "environment.json").read_text())
    assert {"torch", "torchvision", "pytorch-lightning", "torchmetrics", "hydra-core"} <= environment["packages"].keys()
    assert environment["python"] and environment["platform"]
    assert re.fullmatch(r"[0-9a-f]{40}", environment["git"]["commit"])
    timing = json.loads((uninterrupted / "timing.json").read_text())
    assert 0 < timing["fit_seconds"] <= timing["wall_seconds"]
