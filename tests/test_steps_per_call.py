"""Several optimizer steps per Lightning call (model.steps_per_call) change the time only: a run with 8 steps per
call ends byte for byte as one with 1 (weights, optimizer, loop state, metrics.json, every logged value at its
step), with an epoch that does not divide by 8, validations inside an epoch, the beta warm-up and free bits;
max_steps is exact; every step's loss is checked for divergence. Tested with the others of their kind: the
resume from a stop in the middle of a call and DDP (tests/test_reproducibility.py, tests/test_failures.py), what
the model cannot combine with, refused in one line (tests/test_failures.py), the logger and the progress bar
(tests/test_benchmark.py)."""

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from cvae.callbacks.safety import StopOnDivergence
from cvae.errors import DivergenceError
from cvae.run.train import train
from tests.conftest import QUICK_RUN_ANY_CALLBACKS, compose_config

# 11 batches an epoch: a call of 8 and a last one of 3; the loggers write every 3rd step, inside calls
EXACT = [
    *QUICK_RUN_ANY_CALLBACKS,
    "trainer.limit_train_batches=11",
    "trainer.limit_val_batches=1",
    "trainer.limit_test_batches=1",
    "trainer.log_every_n_steps=3",
    "callbacks=model_checkpoint",
    "logger=csv",
    "latent_dim=3",
    "model.kl_warmup_epochs=1",  # beta changes every step: each step must get its own
    "model.free_bits=0.1",
    "+trainer.val_check_interval=4",  # validation after batches 4 and 8 too: calls end there
]


def run(run_dir: Path, data_dir: str, *overrides: str) -> Path:
    train(compose_config("train", [*EXACT, f"data.data_dir={data_dir}", *overrides], run_dir))
    return run_dir


@pytest.fixture(scope="module")
def one_step_per_call(tmp_path_factory, data_dir) -> Path:
    return run(tmp_path_factory.mktemp("one_per_call"), data_dir, "model.steps_per_call=1")


def test_eight_steps_per_call_end_byte_for_byte_as_one(one_step_per_call, tmp_path, data_dir):
    eight = run(tmp_path, data_dir, "model.steps_per_call=8")
    assert (eight / "metrics.json").read_bytes() == (one_step_per_call / "metrics.json").read_bytes()
    # every value the logger wrote, at its step: train/nelbo_step at steps 2, 5, 8, ... (inside calls), the
    # epoch means of train/nelbo and validation
    assert (eight / "metrics.csv").read_bytes() == (one_step_per_call / "metrics.csv").read_bytes()
    logged_steps = [line.split(",")[1] for line in (eight / "metrics.csv").read_text().splitlines()[1:]]
    assert {"2", "5", "8", "20"} <= set(logged_steps)
    mine, reference = (
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True) for run in (eight, one_step_per_call)
    )
    assert mine["global_step"] == reference["global_step"] == 22, "global_step counts optimizer steps"
    for key in ("state_dict", "optimizer_states", "loops"):
        torch.testing.assert_close(mine[key], reference[key], rtol=0, atol=0, msg=key)
    assert mine["loops"]["fit_loop"]["epoch_loop.batch_progress"]["total"]["completed"] == 22, "counted in batches"


def test_max_steps_stops_inside_a_call(tmp_path, data_dir):
    run(tmp_path, data_dir, "model.steps_per_call=8", "+trainer.max_steps=13", "trainer.log_every_n_steps=1")
    rows = [line.split(",") for line in (tmp_path / "metrics.csv").read_text().splitlines()]
    column = rows[0].index("train/nelbo_step")
    assert [int(row[1]) for row in rows[1:] if row[column]] == list(range(13)), "steps 0..12, none more"


def test_a_divergence_inside_a_call_names_its_step():
    callback = StopOnDivergence()
    trainer = SimpleNamespace(
        global_step=7, current_epoch=2, accumulate_grad_batches=1, checkpoint_callback=None, default_root_dir="x"
    )
    module = SimpleNamespace(device=torch.device("cpu"), parameters=lambda: [torch.zeros(3)])
    callback.on_train_epoch_start(trainer, module)
    callback.on_train_batch_end(trainer, module, {"loss": torch.tensor([1.0, 2.0, 3.0])}, None, 2)
    callback.on_train_batch_end(trainer, module, {"loss": torch.tensor([1.0, float("nan"), float("inf")])}, None, 5)
    with pytest.raises(DivergenceError, match="the loss became nan at epoch 2, step 11;"):
        callback.on_train_epoch_end(trainer, module)
