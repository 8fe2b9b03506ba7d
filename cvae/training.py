"""What `python train.py` does: build everything from the config, fit, evaluate the best checkpoint on
validation and test, give every logger the hparams and final metrics and write metrics.json.

A run dir also gets environment.json (versions, platform, git commit: with .hydra/ what it takes to re-run the
run) and timing.json (wall times, kept out of metrics.json so that equal runs have byte-identical metrics.json).
"""

import os
import platform
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ProgressBar, TQDMProgressBar
from pytorch_lightning.strategies.launchers import _SubprocessScriptLauncher
from pytorch_lightning.utilities import rank_zero_only

from cvae.callbacks import CheckpointOnInterrupt, StopOnDivergence
from cvae.checkpoint import AtomicCheckpointIO, check_resumable
from cvae.hparams import log_final
from cvae.loggers import wandb_run_closed
from cvae.utils import instantiate_group, write_json_atomic

PACKAGES = (
    "torch",
    "torchvision",
    "pytorch-lightning",
    "lightning",
    "torchmetrics",
    "hydra-core",
    "omegaconf",
    "numpy",
)
# A DDP rank started by launch_local_ranks finds its job's config, resolved, in this environment variable.
JOB_CONFIG_VARIABLE = "CVAE_JOB_CONFIG"
# What launching local ranks changes in this process, put back afterwards for the next job of a multirun.
DDP_VARIABLES = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE", "OMP_NUM_THREADS")
PROJECT_ROOT = Path(__file__).resolve().parents[1]


def train(cfg: DictConfig) -> dict:
    started = time.perf_counter()
    torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    loggers = instantiate_group(cfg.get("logger"))
    if cfg.get("ckpt_path"):
        check_resumable(cfg.ckpt_path, cfg.model)
    trainer = build_trainer(cfg, loggers)
    output_dir = Path(cfg.paths.output_dir)
    write_environment(output_dir / "environment.json", cfg.paths.root_dir)

    with launch_local_ranks(trainer, cfg), wandb_run_closed():
        fit_started = time.perf_counter()
        trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"), weights_only=True)
        fit_seconds = time.perf_counter() - fit_started
        summary = evaluate_best(trainer, model, datamodule, loggers, cfg)

    if trainer.is_global_zero:
        write_json_atomic(output_dir / "metrics.json", summary)
        timing = {"fit_seconds": round(fit_seconds, 2), "wall_seconds": round(time.perf_counter() - started, 2)}
        write_json_atomic(output_dir / "timing.json", timing)
    return summary


def build_trainer(cfg: DictConfig, loggers: list) -> pl.Trainer:
    """The trainer of a run (also what python -m cvae.benchmark times): the configured callbacks, the safety ones
    and, when the trainer shows a progress bar and none is configured, tqdm redrawn every 10 batches (Lightning's
    default bar, Rich when installed, redraws and reads every logged metric after each batch: about 1 ms of a
    12 ms step on CPU, and a host-device sync per step on a GPU)."""
    # always on, whatever the callbacks group: resumable runs, and no training on from NaN weights
    safety = [RandomStateCheckpoint(), StopOnDivergence(), CheckpointOnInterrupt()]
    callbacks = [*instantiate_group(cfg.get("callbacks")), *safety]
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    return instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()])


def evaluate_best(trainer: pl.Trainer, model, datamodule, loggers: list, cfg: DictConfig) -> dict:
    """Validation and test metrics of the best checkpoint (the weights in memory without checkpoints), with
    the run's epochs and batch size; the metrics also go into every logger's hparams."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    evaluated = best or None
    trainer.loggers = []  # re-validating the best checkpoint is no new point on the val curves
    val_metrics = trainer.validate(model, datamodule=datamodule, ckpt_path=evaluated, verbose=False)[0]
    trainer.loggers = loggers
    metrics = {**val_metrics, **trainer.test(model, datamodule=datamodule, ckpt_path=evaluated)[0]}
    # batch_size is per process: one optimizer step averages the gradients of this many images
    global_batch_size = cfg.batch_size * trainer.world_size * trainer.accumulate_grad_batches
    log_final(loggers, cfg, metrics, {"global_batch_size": global_batch_size}, trainer.global_step)
    return {
        **metrics,
        "epochs": trainer.current_epoch,
        "best_checkpoint": within_run_dir(best, cfg.paths.output_dir),
        "world_size": trainer.world_size,
        "global_batch_size": global_batch_size,
    }


def within_run_dir(path: str, output_dir: str) -> str:
    """The path relative to the run dir when it lies inside it, so that equal runs write equal metrics.json."""
    if path and Path(path).is_relative_to(output_dir):
        return str(Path(path).relative_to(output_dir))
    return path


class RandomStateCheckpoint(pl.Callback):
    """Keeps torch's random state in every checkpoint and puts it back when a run resumes, so the resumed run
    draws the same z samples as an uninterrupted one would have (Lightning's checkpoints hold no random state).

    Under DDP the checkpoint holds rank 0's state, which every rank gets back on resuming.
    """

    def __init__(self):
        self.restored: dict | None = None

    def state_dict(self) -> dict:
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
        return {"cpu": torch.get_rng_state(), "cuda": cuda}

    def load_state_dict(self, state_dict: dict) -> None:
        self.restored = state_dict

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Here, after the sanity check: the uninterrupted run made its sanity-check draws before its first epoch.
        if self.restored is None:
            return
        torch.set_rng_state(self.restored["cpu"])
        if len(self.restored["cuda"]) == torch.cuda.device_count() > 0:
            torch.cuda.set_rng_state_all(self.restored["cuda"])
        self.restored = None


@contextmanager
def launch_local_ranks(trainer: pl.Trainer, cfg: DictConfig):
    """Start the other DDP processes of this machine, each running exactly this job: `python -m cvae.training`
    with the job's config, resolved, in JOB_CONFIG_VARIABLE.

    Lightning would re-run the script with its command line instead; inside a Hydra multirun that command is the
    whole sweep, so every child process would run every member in a sweep dir of its own. Afterwards this
    process is left as it was (no process group, no rank variables, its thread count), so the next member of a
    multirun starts clean. Nothing happens when Lightning would start no processes: one device, another
    strategy, or ranks already started by torchrun or SLURM.
    """
    strategy = trainer.strategy
    if not lightning_would_start_processes(strategy):
        yield
        return
    cluster = strategy.cluster_environment
    saved_variables = {name: os.environ.get(name) for name in DDP_VARIABLES}
    saved_threads = torch.get_num_threads()
    os.environ.update(
        MASTER_ADDR=cluster.main_address,
        MASTER_PORT=str(cluster.main_port),
        NODE_RANK=str(cluster.node_rank()),
        LOCAL_RANK="0",
        WORLD_SIZE=str(strategy.num_processes * strategy.num_nodes),
    )
    children = [start_rank(local_rank, cfg) for local_rank in range(1, strategy.num_processes)]
    try:
        yield
        failed = {child.pid: code for child in children if (code := child.wait())}
        if failed:
            raise RuntimeError(f"DDP processes exited with errors (pid: exit code): {failed}")
    finally:
        for child in children:
            child.kill()  # a no-op for those that exited; the others would wait forever for this rank
            child.wait()
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
        restore_variables(saved_variables)
        torch.set_num_threads(saved_threads)


def lightning_would_start_processes(strategy) -> bool:
    return (
        isinstance(strategy.launcher, _SubprocessScriptLauncher)
        and strategy.num_processes > 1
        and not strategy.cluster_environment.creates_processes_externally
    )


def start_rank(local_rank: int, cfg: DictConfig) -> subprocess.Popen:
    python_path = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    env = {
        **os.environ,
        "LOCAL_RANK": str(local_rank),
        "PYTHONPATH": python_path,
        JOB_CONFIG_VARIABLE: OmegaConf.to_yaml(cfg, resolve=True),
    }
    return subprocess.Popen([sys.executable, "-m", "cvae.training"], env=env)


def restore_variables(saved: dict) -> None:
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@rank_zero_only
def write_environment(path: Path, project_root: str) -> None:
    """What this run ran on, beside the config and overrides Hydra keeps in .hydra/."""
    write_json_atomic(
        path,
        {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "packages": installed_versions(),
            "cuda": torch.version.cuda,
            "git": git_revision(project_root),
        },
    )


def installed_versions() -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_revision(project_root: str) -> dict | None:
    """The commit checked out, and whether tracked files differ from it (then the commit alone does not re-run
    the run); None outside a git checkout."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(project_root), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    # a DDP rank started by launch_local_ranks
    train(OmegaConf.create(os.environ[JOB_CONFIG_VARIABLE]))
