"""Exact reproducibility on CPU: the same config and seed give a byte-identical metrics.json; a run stopped at
any step (end of an epoch, or SIGTERM in the middle of one) and resumed from last.ckpt ends exactly as an
uninterrupted run, in one process and under DDP; how much is evaluated never changes the training; a run dir
records what it ran on."""

import csv
import json
import re
import signal
from pathlib import Path

import pytest
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

from cvae.run.train import train
from tests.conftest import QUICK_RUN, QUICK_RUN_ANY_CALLBACKS, compose_config
from tests.test_train import run_script

QUICK_ANY_CALLBACKS = [*QUICK_RUN_ANY_CALLBACKS, "trainer.limit_test_batches=2", "latent_dim=3", "logger=csv"]
QUICK = [*QUICK_ANY_CALLBACKS, *(override for override in QUICK_RUN if override.startswith("callbacks."))]  # 2 epochs
STOP_MID_EPOCH_1 = [  # SIGTERM in the middle of batch 2 of the 5 of epoch 1, as a scheduler preempting the job
    "+callbacks.stop._target_=tests.test_failures.SignalSelfAt",
    f"+callbacks.stop.signal_number={int(signal.SIGTERM)}",
]


def run(output_dir: Path, data_dir: str, *overrides: str, base: list[str] = QUICK) -> Path:
    train(compose_config("train", [*base, f"data.data_dir={data_dir}", *overrides], output_dir))
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


def test_resumed_mid_epoch_ends_as_the_uninterrupted_one(uninterrupted, tmp_path, data_dir):
    with pytest.raises(SIGTERMException):
        run(tmp_path, data_dir, *STOP_MID_EPOCH_1)
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert (
        torch.load(last, weights_only=True)["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["ready"] == 3
    ), "stopped at the end of the step on batch 2 (batches 0, 1, 2 done)"
    run(tmp_path, data_dir, f"ckpt_path={last}")
    assert (tmp_path / "metrics.json").read_bytes() == (uninterrupted / "metrics.json").read_bytes()
    # the CSV of the resumed run goes on from the interrupted launch's rows (cvae.loggers.trackers.ContinuedCSVLogger)
    assert train_nelbo_per_epoch(tmp_path) == train_nelbo_per_epoch(uninterrupted)


def test_the_dataloader_path_says_a_mid_epoch_resume_is_not_exact(tmp_path, data_dir):
    with pytest.raises(SIGTERMException):
        run(tmp_path, data_dir, "data.loader=dataloader", *STOP_MID_EPOCH_1)
    last = tmp_path / "checkpoints" / "last.ckpt"
    with pytest.warns(UserWarning, match="ended before the epoch ended and your dataloader is not resumable"):
        run(tmp_path, data_dir, "data.loader=dataloader", f"ckpt_path={last}")


def train_nelbo_per_epoch(run_dir: Path) -> dict[str, str]:
    """train/nelbo of every epoch, as the CSV logger wrote it."""
    with open(run_dir / "metrics.csv") as file:
        rows = list(csv.DictReader(file))
    return {row["epoch"]: row["train/nelbo"] for row in rows if row.get("train/nelbo")}


def last_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_how_much_is_evaluated_never_changes_the_training(uninterrupted, tmp_path, data_dir):
    """Less validation, in other batches, every other epoch, without the image and FID callbacks: the same weights
    and the same training curve, since evaluation draws its noise from a stream of its own."""
    run(
        tmp_path,
        data_dir,
        "trainer.limit_val_batches=1",
        "trainer.check_val_every_n_epoch=2",
        "data.eval_batch_size=500",
        "callbacks=model_checkpoint",
        base=QUICK_ANY_CALLBACKS,
    )
    curve = train_nelbo_per_epoch(tmp_path)
    assert len(curve) == 2 and curve == train_nelbo_per_epoch(uninterrupted)
    trained, reference = last_weights(tmp_path), last_weights(uninterrupted)
    assert trained.keys() == reference.keys()
    assert all(torch.equal(trained[name], reference[name]) for name in reference)


def ddp_run(run_dir: Path, data_dir: str, *overrides: str):
    return run_script(
        "train.py",
        "trainer=ddp_cpu",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=5",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false",
        "data.eval_batch_size=250",
        "callbacks=model_checkpoint",
        "logger=csv",
        "batch_size=32",
        f"data.data_dir={data_dir}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    )


def test_ddp_resumed_mid_epoch_ends_as_the_uninterrupted_one(tmp_path, data_dir):
    """Every rank's random stream and partial training sums go into the checkpoint and come back to each rank."""
    uninterrupted = ddp_run(tmp_path / "uninterrupted", data_dir)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    stopped = ddp_run(tmp_path / "resumed", data_dir, *STOP_MID_EPOCH_1)
    assert stopped.returncode != 0 and "interrupted at epoch 1" in stopped.stdout + stopped.stderr
    last = tmp_path / "resumed" / "checkpoints" / "last.ckpt"
    assert len(torch.load(last, weights_only=True)["callbacks"]["RankState"]["ranks"]) == 2
    resumed = ddp_run(tmp_path / "resumed", data_dir, f"ckpt_path={last}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = (tmp_path / "uninterrupted" / "metrics.json").read_bytes()
    assert (tmp_path / "resumed" / "metrics.json").read_bytes() == metrics
    assert json.loads(metrics)["world_size"] == 2


def test_run_dir_records_versions_commit_and_timing(uninterrupted):
    environment = json.loads((uninterrupted / "environment.json").read_text())
    assert {"torch", "torchvision", "pytorch-lightning", "torchmetrics", "hydra-core"} <= environment["packages"].keys()
    assert environment["python"] and environment["platform"]
    assert re.fullmatch(r"[0-9a-f]{40}", environment["git"]["commit"])
    timing = json.loads((uninterrupted / "timing.json").read_text())
    assert 0 < timing["fit_seconds"] <= timing["wall_seconds"]
