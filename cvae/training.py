"""What `python train.py` does: build everything from the config, fit, evaluate the best checkpoint on
validation and test, attach the final metrics to the TensorBoard hparams and write metrics.json."""
import time
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger

from cvae.utils import instantiate_group, write_json_atomic

HPARAM_KEYS = ("latent_dim", "batch_size", "lr", "seed", "model", "data", "trainer")


def train(cfg: DictConfig) -> dict:
    pl.seed_everything(cfg.seed, workers=True)
    datamodule = instantiate(cfg.data)
    model = instantiate(cfg.model)
    loggers = instantiate_group(cfg.get("logger"))
    trainer = instantiate(cfg.trainer, callbacks=instantiate_group(cfg.get("callbacks")), logger=loggers or False)

    started = time.perf_counter()
    trainer.fit(model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - started

    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    evaluated = best or None  # without checkpoints, the weights in memory
    trainer.loggers = []  # re-validating the best checkpoint is no new point on the val curves
    val_metrics = trainer.validate(model, datamodule=datamodule, ckpt_path=evaluated, verbose=False)[0]
    trainer.loggers = loggers
    metrics = {**val_metrics, **trainer.test(model, datamodule=datamodule, ckpt_path=evaluated)[0]}
    summary = {
        **metrics,
        "epochs": trainer.current_epoch,
        "best_checkpoint": best,
        "fit_seconds": round(fit_seconds, 2),
    }
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(knobs(cfg), metrics={f"final/{name}": value for name, value in metrics.items()})
    if trainer.is_global_zero:
        write_json_atomic(Path(cfg.paths.output_dir) / "metrics.json", summary)
    return summary


def knobs(cfg: DictConfig) -> dict:
    """The settings that tell runs apart, for TensorBoard's HPARAMS tab: Hydra's `_target_`-style keys left out."""
    def without_hydra_keys(node):
        if isinstance(node, dict):
            return {key: without_hydra_keys(value) for key, value in node.items() if not key.startswith("_")}
        return node

    return without_hydra_keys({
        key: OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
        for key in HPARAM_KEYS if key in cfg
    })
