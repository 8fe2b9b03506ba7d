"""What `python evaluate.py ckpt_path=...` does: test metrics of a checkpoint, a table, metrics.json and a
PNG of prior samples per digit, all in evaluate's own output dir."""
from pathlib import Path

import pytorch_lightning as pl
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.utils import save_image

from cvae.checkpoint import load_module
from cvae.images import digit_rows, digit_rows_latents
from cvae.utils import format_table, write_json_atomic


def evaluate(cfg: DictConfig) -> dict:
    pl.seed_everything(cfg.seed, workers=True)
    module = load_module(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]

    output_dir = Path(cfg.paths.output_dir)
    z = digit_rows_latents(module.model.latent_dim, cfg.samples_per_digit, seed=cfg.seed)
    save_image(digit_rows(module.model, z), output_dir / "samples.png")
    write_json_atomic(output_dir / "metrics.json", {**metrics, "ckpt_path": str(Path(cfg.ckpt_path).resolve())})
    print(format_table(metrics))
    return metrics
