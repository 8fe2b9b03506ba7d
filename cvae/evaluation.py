"""What `python evaluate.py ckpt_path=...` does: test metrics of a checkpoint, a table, metrics.json and a
PNG of samples per digit, plus whatever generation and exploration the config asks for (see
conf/evaluate.yaml), all in evaluate's own output dir. Every sample's z comes from `sampler`: the prior, or an
ex-post mixture fitted to the training images."""

from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig
from torchvision.utils import save_image

from cvae import generate
from cvae.checkpoint import load_module
from cvae.data import split_tensors
from cvae.errors import ConfigError
from cvae.images import (
    digit_rows,
    image_grid,
    interpolation_images,
    latent_map_images,
    rows_grid,
    style_transfer_image,
)
from cvae.model import CVAE
from cvae.projector import write_projector
from cvae.quality import generator_report
from cvae.sampler import Sampler
from cvae.utils import format_table, write_json_atomic


def evaluate(cfg: DictConfig) -> dict:
    check_requests(cfg)  # before the test pass, so a typo fails in a second, not after it
    pl.seed_everything(cfg.seed, workers=True)
    module = load_module(cfg.ckpt_path)
    datamodule = instantiate(cfg.data)
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
    metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
    module.to(trainer.strategy.root_device)  # Lightning moves it to the CPU after testing; the rest runs here

    output_dir = Path(cfg.paths.output_dir)
    sampler = instantiate(cfg.sampler).fit_for_checkpoint(
        module.model, *split_tensors(datamodule, "train"), cfg.ckpt_path
    )
    z = sampler.grid_latents(module.model, cfg.samples_per_digit, seed=cfg.seed)
    save_image(digit_rows(module.model, z.to(generate.model_device(module.model))), output_dir / "samples.png")
    test_split = split_tensors(datamodule, "test")
    metrics.update(quality_report(module.model, cfg, *test_split, sampler))
    for name, picture in requested_pictures(module.model, cfg, *test_split, sampler).items():
        save_image(picture, output_dir / f"{name}.png")
    if cfg.projector:
        write_projector(module.model, *(part[: cfg.projector_images] for part in test_split), output_dir)
    if cfg.export.per_digit:
        export_synthetic(module.model, cfg, output_dir, sampler)
    metrics.update(write_anomaly_outputs(module.model, cfg, *test_split, output_dir))
    write_json_atomic(output_dir / "metrics.json", {**metrics, "ckpt_path": str(Path(cfg.ckpt_path).resolve())})
    print(format_table(dict(sorted(metrics.items(), key=lambda item: item[0].count("/")))))  # per-digit rows last
    return metrics


def check_requests(cfg: DictConfig) -> None:
    """Every generation key the config sets is valid; otherwise a one-line ValueError naming it."""
    if cfg.digits is not None:
        generate.parse_digits(cfg.digits, "digits")
    if cfg.digit is not None:
        generate.parse_digit(cfg.digit, "digit")
    generate.check_count(cfg.variants, "variants")
    generate.check_count(cfg.interpolation_steps, "interpolation_steps")
    generate.check_count(cfg.projector_images, "projector_images")
    generate.check_count(cfg.export.per_digit, "export.per_digit", minimum=0)  # 0: no export
    generate.check_score(cfg.anomaly.score)
    generate.check_count(cfg.anomaly.k, "anomaly.k")
    scores_for = cfg.anomaly.scores_for
    if scores_for not in (None, "test"):
        path = Path(str(scores_for))
        if not path.is_file() or path.suffix not in generate.IMAGE_SET_SUFFIXES:
            raise ConfigError(f"anomaly.scores_for={scores_for!r} is neither test nor an existing .pt or .npz file")


def quality_report(
    model: CVAE, cfg: DictConfig, x: torch.Tensor, y: torch.Tensor, sampler: Sampler
) -> dict[str, float]:
    """test/fid, test/label_acc (both also per digit), test/nll_iw and, with quality.cas, test/cas."""
    quality = cfg.quality
    device = generate.model_device(model)
    with generate.seeded_global_rng(cfg.seed, device):
        return generator_report(
            model,
            generate.pixels(x).to(device),
            y.to(device),
            num_samples=quality.num_samples,
            features=quality.features,
            inception_weights=quality.inception_weights,
            iw_samples=quality.iw_samples,
            seed=cfg.seed,
            cas_per_digit=quality.cas_per_digit if quality.cas else 0,
            cas_epochs=quality.cas_epochs,
            sampler=sampler,
        )


def requested_pictures(
    model: CVAE, cfg: DictConfig, x: torch.Tensor, y: torch.Tensor, sampler: Sampler
) -> dict[str, torch.Tensor]:
    """The PNG images the config asks for, by file name (without .png)."""
    pictures = {}
    if cfg.digits is not None:
        pictures["digits"] = rows_grid(generate.digit_strings(model, cfg.digits, cfg.variants, cfg.seed, sampler))
    if cfg.digit is not None:
        variants = generate.digit_variants(model, cfg.digit, cfg.variants, cfg.seed, sampler)
        pictures[f"digit_{generate.parse_digit(cfg.digit)}"] = image_grid(variants)
    if cfg.latent_map:
        pictures.update(latent_map_images(model, x, y))
    if cfg.interpolate:
        pictures.update(interpolation_images(model, cfg.interpolation_steps, cfg.seed))
    if cfg.style_transfer:
        sources = generate.first_of_each_digit(y)
        pictures["style_transfer"] = style_transfer_image(model, x[sources], y[sources])
    return pictures


def export_synthetic(model: CVAE, cfg: DictConfig, output_dir: Path, sampler: Sampler) -> None:
    images, labels = generate.synthetic_dataset(
        model, cfg.export.per_digit, cfg.seed, cfg.batch_size, progress=True, sampler=sampler
    )
    for path in generate.write_synthetic_dataset(
        images, labels, output_dir, image_folder=cfg.export.image_folder, progress=True
    ):
        print(f"wrote {path}")


def write_anomaly_outputs(model: CVAE, cfg: DictConfig, x: torch.Tensor, y: torch.Tensor, output_dir: Path) -> dict:
    """anomaly_scores.csv and anomaly_demo.json, as asked; the demo's AUROC as a metric."""
    anomaly = cfg.anomaly
    if anomaly.scores_for is not None:
        images, labels = (x, y) if anomaly.scores_for == "test" else generate.load_image_set(anomaly.scores_for)
        scores = generate.anomaly_scores(model, images, labels, anomaly.score, anomaly.k, cfg.seed, cfg.batch_size)
        print(f"wrote {generate.write_scores_csv(output_dir / 'anomaly_scores.csv', scores, labels, anomaly.score)}")
    if not anomaly.demo:
        return {}
    demo = generate.anomaly_demo(model, x, y, anomaly.score, anomaly.k, cfg.seed, cfg.batch_size)
    write_json_atomic(output_dir / "anomaly_demo.json", demo)
    return {"anomaly_demo/auroc": demo["auroc"]}
