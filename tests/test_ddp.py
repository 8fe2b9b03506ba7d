"""DDP with 2 CPU processes (trainer=ddp_cpu) inside a multirun, as users type it: each member is one complete
run in its own dir, no process leaves stray output dirs, and the logged metrics, synced across ranks, equal what
one process computes on the same checkpoint."""

import json
import os
import signal
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import pytorch_lightning as pl
import torch
from lightning_utilities.core.apply_func import apply_to_collection

from cvae.callbacks.quality import GenerationQuality
from cvae.callbacks.rank_state import RankState
from cvae.data.mnist import MNISTDataModule
from cvae.model.checkpoint import load_module
from cvae.model.mlp import MLP
from cvae.model.module import CVAELitModule
from tests.test_reproducibility import ddp_run
from tests.test_train import run_script

# validation batches of one image on each of the 2 ranks: images 0..2*VAL_BATCHES_PER_RANK-1 in all
VAL_BATCHES_PER_RANK = 50
BATCH_SIZE = 32
FID_SAMPLES = 1000


class SameNoiseForEveryImage(pl.Callback):
    """Re-seeds torch before each evaluation batch. With one image per batch every image gets the same z noise,
    whichever rank evaluates it, so -ELBO (one random z per image) is a function of the image alone and a DDP mean
    can be compared with a one-process mean to float rounding, not to Monte Carlo noise (about 5e-4 relative)."""

    def on_validation_batch_start(self, *args) -> None:
        torch.manual_seed(0)

    def on_test_batch_start(self, *args) -> None:
        torch.manual_seed(0)


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory, data_dir):
    """`python train.py -m latent_dim=2,10 trainer=ddp_cpu trainer.max_epochs=1` on a few batches, with every
    default output location moved into an empty project root, where stray dirs would show."""
    project_root = tmp_path_factory.mktemp("project")
    sweep_dir = project_root / "sweep"
    result = run_script(
        "train.py",
        "-m",
        "latent_dim=2,10",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=3",
        f"trainer.limit_val_batches={VAL_BATCHES_PER_RANK}",
        "trainer.limit_test_batches=1",
        "trainer.enable_progress_bar=false",
        "data.eval_batch_size=1",
        f"batch_size={BATCH_SIZE}",
        f"data.data_dir={data_dir}",
        f"hydra.sweep.dir={sweep_dir}",
        f"+callbacks.same_noise._target_={__name__}.SameNoiseForEveryImage",
        f"callbacks.generation_quality.num_samples={FID_SAMPLES}",
        env_extra={"PROJECT_ROOT": str(project_root)},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return project_root, sweep_dir


def test_ddp_multirun_gives_one_complete_run_per_member(ddp_sweep):
    project_root, sweep_dir = ddp_sweep
    for job, latent_dim in (("0", 2), ("1", 10)):
        member = sweep_dir / job
        assert list(member.glob("events.out.tfevents.*"))
        assert (member / "checkpoints" / "last.ckpt").is_file()
        assert load_module(member / "checkpoints" / "best.ckpt").net.latent_dim == latent_dim
        metrics = json.loads((member / "metrics.json").read_text())
        assert "test/nelbo" in metrics and metrics["epochs"] == 1
        assert (metrics["world_size"], metrics["global_batch_size"]) == (2, 2 * BATCH_SIZE), "batch_size is per process"
    assert sorted(path.name for path in sweep_dir.iterdir() if path.is_dir()) == ["0", "1"]
    assert sorted(path.name for path in project_root.iterdir()) == ["sweep"], "no stray output dirs"


def test_ddp_metrics_equal_one_process_evaluation(ddp_sweep, data_dir):
    """metrics.json holds the best checkpoint validated and tested by both ranks; one process evaluating the same
    images with the same checkpoint gets the same means, FID, label accuracy and active units: every image
    counted once, none twice, and the real images' FID features once."""
    _, sweep_dir = ddp_sweep
    member = sweep_dir / "0"
    logged = json.loads((member / "metrics.json").read_text())
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SameNoiseForEveryImage(), GenerationQuality(num_samples=FID_SAMPLES)],
        limit_val_batches=2 * VAL_BATCHES_PER_RANK,
        limit_test_batches=2,
    )
    datamodule = MNISTDataModule(data_dir=data_dir, eval_batch_size=1)
    module = load_module(member / "checkpoints" / "best.ckpt")
    single = {
        **trainer.validate(module, datamodule=datamodule, verbose=False)[0],
        **trainer.test(module, datamodule=datamodule, verbose=False)[0],
    }
    for name in ("val/nelbo", "val/kl", "test/nelbo", "test/kl", "val/fid", "val/fid_digit/3"):
        assert logged[name] == pytest.approx(single[name], rel=1e-4), name
    for name in ("val/label_acc", "val/label_acc_digit/3", "val/active_units", "test/active_units"):
        assert logged[name] == single[name], name


class ExitAt(pl.Callback):
    """Stands in for a rank that dies (out of memory, a segfault): it exits with `code` after the step that
    trained on batch 2, after every rank wrote its pid into `pid_dir`."""

    def __init__(self, rank: int, code: int, pid_dir: str):
        self.rank, self.code, self.pid_dir = rank, code, Path(pid_dir)

    def on_train_start(self, trainer, pl_module):
        (self.pid_dir / str(trainer.global_rank)).write_text(str(os.getpid()))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_rank == self.rank and batch_idx >= 2:
            os._exit(self.code)


def test_a_dead_rank_ends_the_job_at_once_naming_it(tmp_path, data_dir):
    started = time.monotonic()
    result = run_script(
        "train.py",
        "trainer=ddp_cpu",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=400",
        "trainer.enable_progress_bar=false",
        "callbacks=none",
        "logger=csv",
        f"data.data_dir={data_dir}",
        f"hydra.run.dir={tmp_path / 'run'}",
        f"+callbacks.exit._target_={__name__}.ExitAt",
        "+callbacks.exit.rank=1",
        "+callbacks.exit.code=3",
        f"+callbacks.exit.pid_dir={tmp_path}",
    )
    elapsed = time.monotonic() - started
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: DDP rank 1"), result.stderr[-2000:]
    assert "exited with code 3" in result.stderr
    assert elapsed < 60, f"{elapsed:.0f} s: the job waited for the dead rank"
    for rank in ("0", "1"):
        pid = int((tmp_path / rank).read_text())
        assert not Path(f"/proc/{pid}").exists(), f"rank {rank} (pid {pid}) is still running"


class SignalRankAt(pl.Callback):
    """Sends one rank a real signal just before a given optimizer step, as `kill` from outside would: the main process
    (rank 0) as docker stop, Kubernetes or a scheduler does, or one other rank alone: in the middle of that step."""

    def __init__(self, rank: int, signal_number: int, step: int):
        self.rank, self.signal_number, self.step = rank, signal_number, step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if trainer.global_rank == self.rank and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signal_number)


# 5 batches an epoch, steps 0-4 | 5-9. (the rank signalled, the signal, the optimizer step it comes in the middle
# of, the steps done when every rank stopped (that step finished, the next not begun), the exit code, the line said)
STOPS = [
    (0, signal.SIGTERM, 0, 1, 143, "error: stopped by SIGTERM"),
    (1, signal.SIGINT, 2, 3, 130, "error: stopped by Ctrl-C (SIGINT)"),
    (1, signal.SIGTERM, 5, 6, 143, "error: stopped by SIGTERM"),
    (0, signal.SIGINT, 7, 8, 130, "error: stopped by Ctrl-C (SIGINT)"),
]


def test_a_signal_to_any_one_rank_stops_every_rank_at_that_step_and_the_run_resumes_exactly(tmp_path, data_dir):
    """One run, stopped four times (SIGTERM and SIGINT, to the main process and to rank 1 alone, in the middle of an
    optimizer step) and resumed after each: every stop writes last.ckpt at the end of that step with both ranks in
    it, exits 143 / 130 with one line, and the end is byte-identical to a run never stopped."""
    uninterrupted = ddp_run(tmp_path / "uninterrupted", data_dir)
    assert uninterrupted.returncode == 0, uninterrupted.stderr[-3000:]
    run_dir, resume = tmp_path / "stopped", []
    last = run_dir / "checkpoints" / "last.ckpt"
    for rank, signal_number, step, stop_step, code, line in STOPS:
        started = time.monotonic()
        stopped = ddp_run(
            run_dir,
            data_dir,
            *resume,
            f"+callbacks.signal._target_={__name__}.SignalRankAt",
            f"+callbacks.signal.rank={rank}",
            f"+callbacks.signal.signal_number={int(signal_number)}",
            f"+callbacks.signal.step={step}",
        )
        case = f"{signal_number.name} to rank {rank} after step {step}"
        assert stopped.returncode == code, f"{case}: {stopped.stderr[-3000:]}"
        said = [text for text in stopped.stderr.splitlines() if text.startswith("error: ")]
        assert len(said) == 1 and said[0].startswith(f"{line}; resume with ckpt_path="), (
            f"{case}: {stopped.stderr[-2000:]}"
        )
        assert time.monotonic() - started < 120, f"{case}: the ranks waited for each other"
        checkpoint = torch.load(last, weights_only=True)
        assert checkpoint["global_step"] == stop_step, case
        assert len(checkpoint["callbacks"]["RankState"]["ranks"]) == 2, case
        resume = [f"ckpt_path={last}"]
    resumed = ddp_run(run_dir, data_dir, *resume)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (run_dir / "metrics.json").read_bytes() == (tmp_path / "uninterrupted" / "metrics.json").read_bytes()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU: on a CPU every tensor is a CPU tensor")
def test_only_cpu_tensors_cross_all_gather_object(monkeypatch):
    """A rank's checkpoint part (its random state, the epoch's training sums) lives on its GPU; pickled on cuda:k
    it would be unpickled onto cuda:k by every rank. What all_gather_object is given holds CPU tensors only."""
    module = CVAELitModule(MLP()).to("cuda")
    module.train_nelbo.update(torch.ones(4, device="cuda"))
    sent = []

    def all_gather_object(gathered: list, local) -> None:
        sent.append(local)
        gathered[:] = [local] * len(gathered)

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_gather_object", all_gather_object)
    state = RankState(seed=0)
    state.trainer, state.pl_module = SimpleNamespace(world_size=2), module
    state.state_dict()
    devices = []
    apply_to_collection(sent, torch.Tensor, lambda tensor: devices.append(tensor.device.type))
    assert len(sent) == 1 and devices and set(devices) == {"cpu"}, devices
