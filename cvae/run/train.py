"""What `python train.py` does: build everything from the config, fit, evaluate the best checkpoint, and write
metrics.json, environment.json and timing.json (apart, so that equal runs have byte-identical metrics.json)."""

import os
import platform
import subprocess
import time
from contextlib import suppress
from importlib import metadata
from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only

import cvae
from cvae.callbacks.images import tensorboard_image_tag
from cvae.callbacks.rank_state import RankState
from cvae.callbacks.record import RunRecord
from cvae.callbacks.safety import CheckpointOnInterrupt, StopOnDivergence
from cvae.callbacks.signals import StopTogether
from cvae.files import confined_to, read_json, write_json_atomic
from cvae.loggers.hparams import log_final
from cvae.loggers.trackers import wandb_run_closed
from cvae.model.checkpoint import AtomicCheckpointIO, build_module
from cvae.run.console import (
    announce_resume,
    announce_run_dir,
    list_results,
    metrics_table,
    shown,
    silence_library_noise,
)
from cvae.run.launch import JOB_CONFIG_VARIABLE, launch_local_ranks, member_devices
from cvae.run.resume import FINISHED, check_resumable, check_same_run, launch_decision, record_resume, training_settings
from cvae.run.rundir import check_task_writes
from cvae.trust import instantiate, instantiate_group

# git runs no hook or file-system monitor, whatever a config says
NEUTRAL_GIT = ("-c", "core.fsmonitor=false", "-c", "core.hooksPath=/dev/null")
PACKAGES = "torch torchvision pytorch-lightning lightning torchmetrics hydra-core omegaconf numpy".split()


def train(cfg: DictConfig) -> dict:
    output_dir = Path(cfg.paths.output_dir)
    check_task_writes(cfg, output_dir)
    with confined_to(output_dir):
        started = time.perf_counter()
        silence_library_noise()
        decision = launch_decision(output_dir, cfg)
        if decision.action == FINISHED:  # resume.auto into a finished run of its own: nothing trained or written
            check_same_run(output_dir, cfg)
            print(f"{shown(output_dir)} holds this run, finished (metrics.json): kept as it is, nothing trained")
            return read_json(output_dir / "metrics.json")
        announce_run_dir("train", output_dir)
        # in the config the other local ranks are given
        cfg.ckpt_path, cfg.trainer.devices = decision.ckpt_path, member_devices(cfg.trainer)
        if cfg.ckpt_path:  # before anything is built: a resume of another run is refused in one line
            record_resume(output_dir, cfg.ckpt_path, check_resumable(cfg.ckpt_path, cfg))
            announce_resume(cfg.ckpt_path)
        torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
        pl.seed_everything(cfg.seed, workers=True)
        datamodule = instantiate(cfg.data)
        model = build_module(cfg.model)
        loggers = instantiate_group(cfg.get("logger"))
        trainer = build_trainer(cfg, loggers)
        write_environment(output_dir / "environment.json")
        with launch_local_ranks(trainer, cfg), wandb_run_closed():
            fit_started = time.perf_counter()
            trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
            fit_seconds = time.perf_counter() - fit_started
            summary = evaluate_best(trainer, model, datamodule, loggers, cfg)
        if trainer.is_global_zero:
            write_json_atomic(output_dir / "metrics.json", summary)
            timing = {"fit_seconds": round(fit_seconds, 2), "wall_seconds": round(time.perf_counter() - started, 2)}
            write_json_atomic(output_dir / "timing.json", timing)
            print("the best checkpoint's figures (each digit's and each latent dimension's in metrics.json):")
            print(metrics_table({name: value for name, value in summary.items() if name.count("/") == 1}))
        tensorboard = any(isinstance(logger, TensorBoardLogger) for logger in loggers)
        pictures = [tag for callback in trainer.callbacks for tag in getattr(callback, "pictures", ())]
        pictures = [tensorboard_image_tag(tag) for tag in pictures] if tensorboard else pictures
        list_results(
            output_dir, ["metrics.json", "checkpoints/best.ckpt", "checkpoints/last.ckpt"], tensorboard, pictures
        )
        return summary


def build_trainer(cfg: DictConfig, loggers: list) -> pl.Trainer:
    """The trainer of a run (also what python -m benchmarks.speed times): the configured callbacks, the safety ones
    and, when the trainer shows a progress bar and none is configured, tqdm redrawn every 10 batches (Lightning's
    default bar, Rich when installed, redraws and reads every logged metric after each batch: about 1 ms of a
    12 ms step on CPU, and a host-device sync per step on a GPU)."""
    # then those always on, whatever the callbacks group: resumable runs, and no training on from NaN weights
    callbacks = [*instantiate_group(cfg.get("callbacks")), RankState(cfg.seed), RunRecord(training_settings(cfg))]
    if cfg.trainer.get("fast_dev_run"):  # "no checkpoints", as Lightning documents it (its ModelCheckpoint still
        callbacks = [c for c in callbacks if not isinstance(c, ModelCheckpoint)]  # writes last.ckpt at train end)
    callbacks += [StopTogether(), StopOnDivergence(), CheckpointOnInterrupt()]
    if cfg.trainer.get("enable_progress_bar", True) and not any(isinstance(c, ProgressBar) for c in callbacks):
        callbacks.append(TQDMProgressBar(refresh_rate=10))
    return instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        # checkpoints only where the callbacks group asks for them (Lightning would add its own ModelCheckpoint)
        enable_checkpointing=any(isinstance(callback, ModelCheckpoint) for callback in callbacks),
        # the datamodule shards every split itself, seeded by seed and epoch, with no padded repeats
        use_distributed_sampler=False,
    )


def evaluate_best(trainer: pl.Trainer, model, datamodule, loggers: list, cfg: DictConfig) -> dict:
    """Validation and test metrics of the best checkpoint (the weights in memory without checkpoints), also into every
    logger's hparams; the validation hooks run, so GenerationQuality adds val/fid and val/label_acc of it."""
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    trainer.loggers = []  # re-validating the best checkpoint is no new point on the val curves
    best_weights = {"datamodule": datamodule, "ckpt_path": best or None, "weights_only": True}  # data only: no pickle
    val_metrics = trainer.validate(model, verbose=False, **best_weights)[0]
    trainer.loggers = loggers
    metrics = {**val_metrics, **trainer.test(model, verbose=False, **best_weights)[0]}  # train() prints them
    # batch_size is per process: one optimizer step averages the gradients of this many images
    global_batch_size = cfg.batch_size * trainer.world_size * trainer.accumulate_grad_batches
    log_final(loggers, cfg, metrics, {"global_batch_size": global_batch_size}, trainer.global_step)
    if best and Path(best).is_relative_to(cfg.paths.output_dir):  # so that equal runs write equal metrics.json
        best = str(Path(best).relative_to(cfg.paths.output_dir))
    run = {"epochs": trainer.current_epoch, "best_checkpoint": best}
    return {**metrics, **run, "world_size": trainer.world_size, "global_batch_size": global_batch_size}


@rank_zero_only
def write_environment(path: Path) -> None:
    """What this run ran on, beside the config and overrides Hydra keeps in .hydra/."""
    versions = {}
    for package in PACKAGES:
        with suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    environment = {"python": platform.python_version(), "platform": platform.platform(), "packages": versions}
    write_json_atomic(path, {**environment, "cuda": torch.version.cuda, "git": git_revision()})


def git_revision() -> dict | None:
    """The commit of the checkout this package runs from and whether tracked files differ; None outside a checkout.
    Never the config's folder: `git status` in another repo runs what that repo's config names (core.fsmonitor)."""
    checkout = Path(cvae.__file__).resolve().parents[1]
    if not (checkout / ".git").exists():  # a folder, or a file in a worktree
        return None

    # without git's variables (GIT_DIR, GIT_CONFIG_*: another repo, config or command) and with no system or global
    # config: only the checkout's own config is read, the user's, as in any git command there. GIT_OPTIONAL_LOCKS=0:
    # `status` reads the index and leaves it as it is (no write into the checkout)
    env = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, GIT_OPTIONAL_LOCKS="0")

    def git(*args: str) -> str:
        command = ["git", *NEUTRAL_GIT, "-C", str(checkout), *args]
        return subprocess.run(command, capture_output=True, text=True, check=True, env=env).stdout.strip()

    try:
        return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    # a DDP rank started by launch_local_ranks: its errors and interruptions end it as they end train.py
    from cvae.run.cli import run_task

    run_task(train, OmegaConf.create(os.environ[JOB_CONFIG_VARIABLE]))
