"""The template's conveniences: early stopping, the debug configs (fast_dev_run, overfit_batches, profiler),
trainer=mps, and `--help` with a usage summary through Hydra's help template."""

import pytest
from pytorch_lightning.accelerators import AcceleratorRegistry
from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint
from pytorch_lightning.profilers import SimpleProfiler

from cvae.trust import instantiate
from cvae.trust import instantiate_group as build_group
from tests.conftest import QUICK_RUN_ANY_CALLBACKS, compose_config
from tests.test_train import run_script


def test_early_stopping_joins_the_default_callbacks(tmp_path):
    overrides = ["callbacks=[default,early_stopping]", "callbacks.early_stopping.patience=3"]
    cfg = compose_config("train", overrides, tmp_path)
    callbacks = build_group(cfg.callbacks)
    (stopping,) = [callback for callback in callbacks if isinstance(callback, EarlyStopping)]
    assert stopping.monitor == "val/nelbo" and stopping.patience == 3 and stopping.mode == "min"
    assert any(isinstance(callback, ModelCheckpoint) for callback in callbacks), "the defaults stay"


def test_debug_fdr_runs_one_batch_of_each_split_and_writes_no_checkpoint(tmp_path, data_dir):
    """With the default callbacks, ModelCheckpoint's included (Lightning's own would write last.ckpt at train end)."""
    from cvae.run.train import train

    overrides = [*QUICK_RUN_ANY_CALLBACKS, "debug=fdr", f"data.data_dir={data_dir}"]
    metrics = train(compose_config("train", overrides, tmp_path))
    assert metrics["epochs"] == 1 and "test/nelbo" in metrics
    assert not list(tmp_path.rglob("*.ckpt")) and metrics["best_checkpoint"] == ""


@pytest.mark.parametrize(
    ("option", "expected"),
    [("overfit", {"overfit_batches": 3, "max_epochs": 20}), ("profiler", {"max_epochs": 1})],
)
def test_debug_overfit_and_profiler_set_the_trainer(tmp_path, option, expected):
    cfg = compose_config("train", [f"debug={option}", "trainer.accelerator=cpu"], tmp_path)
    assert expected.items() <= dict(cfg.trainer).items()
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert isinstance(trainer.profiler, SimpleProfiler) == (option == "profiler")


def test_trainer_mps_names_an_accelerator_lightning_has(tmp_path):
    cfg = compose_config("train", ["trainer=mps"], tmp_path)
    assert (cfg.trainer.accelerator, cfg.trainer.devices) == ("mps", 1) and "mps" in AcceleratorRegistry
    assert cfg.trainer.max_epochs == 50, "the defaults underneath"


def test_help_starts_with_a_usage_summary_then_lists_every_group():
    train_help = run_script("train.py", "--help")
    assert train_help.returncode == 0, train_help.stderr[-2000:]
    usage = train_help.stdout
    assert usage.startswith("python train.py [KEY=VALUE ...]") and "python train.py -m hparams_search=optuna" in usage
    assert "debug: fdr, overfit, profiler" in usage and "mps" in usage and "early_stopping" in usage
    assert "latent_dim: 2" in usage, "the composed config follows"
    evaluate_help = run_script("evaluate.py", "--help")
    assert evaluate_help.stdout.startswith("python evaluate.py ckpt_path=")
