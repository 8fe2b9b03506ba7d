"""What `python evaluate.py ckpt_path=...` does: a checkpoint's test metrics, samples per digit and whatever else
conf/evaluate.yaml asks for, in evaluate's own run dir. Every sample's z comes from `sampler`."""

from pathlib import Path

import pytorch_lightning as pl
import torch
from omegaconf import DictConfig
from torchvision.utils import save_image

from cvae.data.mnist import split_tensors
from cvae.explore.anomaly import anomaly_demo, anomaly_scores, write_scores_csv
from cvae.explore.digits import digit_strings, digit_variants
from cvae.explore.export import load_image_set, synthetic_dataset, write_synthetic_dataset
from cvae.explore.figures import (
    digit_rows,
    for_people,
    image_grid,
    interpolation_images,
    latent_map_images,
    rows_grid,
    style_transfer_image,
)
from cvae.explore.latent import first_of_each_digit
from cvae.explore.projector import write_projector
from cvae.files import atomic_path, confined_to, write_json_atomic
from cvae.metrics.generation import generator_report, reference_cache_folder
from cvae.model.checkpoint import load_module
from cvae.model.cvae import Net, model_device, pixels
from cvae.model.network import NUM_CLASSES
from cvae.run.console import announce_run_dir, list_results, metrics_table, silence_library_noise
from cvae.run.rundir import check_task_writes
from cvae.sampling.prior import Sampler
from cvae.seeding import seeded_global_rng
from cvae.trust import instantiate
from cvae.validate import parse_digit

DIGIT_ROWS = [str(digit) for digit in range(NUM_CLASSES)]


def evaluate(cfg: DictConfig) -> dict:
    output_dir = Path(cfg.paths.output_dir)
    check_task_writes(cfg, output_dir)
    with confined_to(output_dir):
        silence_library_noise()
        announce_run_dir("evaluate", output_dir)
        pl.seed_everything(cfg.seed, workers=True)
        module = load_module(cfg.ckpt_path)
        # anomaly.scores_for's file read now, so that a bad file is said before the test pass (None: the test set)
        scored = None if cfg.anomaly.scores_for in (None, "test") else load_image_set(cfg.anomaly.scores_for)
        datamodule = instantiate(cfg.data)
        trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_checkpointing=False)
        sampler = instantiate(cfg.sampler)  # built (its arguments checked) before the test pass, fitted after it
        metrics = trainer.test(module, datamodule=datamodule, verbose=False)[0]
        module.to(trainer.strategy.root_device)  # Lightning moves it to the CPU after testing; the rest runs here
        train_split = split_tensors(datamodule, "train")
        sampler = sampler.fit_for_checkpoint(module.net, *train_split, cfg.ckpt_path)
        z = sampler.grid_latents(module.net, cfg.samples_per_digit, seed=cfg.seed)
        samples = digit_rows(module.net, z.to(model_device(module.net)))
        save_png(for_people(samples, DIGIT_ROWS, cfg.picture_scale), output_dir / "samples.png")
        test_split = split_tensors(datamodule, "test")
        metrics.update(quality_report(module.net, cfg, *test_split, sampler, train_labels=train_split[1]))
        pictures = requested_pictures(module.net, cfg, *test_split, sampler)
        for name, picture in pictures.items():
            save_png(picture, output_dir / f"{name}.png")
        if cfg.projector:
            write_projector(module.net, *(part[: cfg.projector_images] for part in test_split), output_dir)
        if cfg.export.per_digit:
            images, labels = synthetic_dataset(
                module.net, cfg.export.per_digit, cfg.seed, cfg.batch_size, progress=True, sampler=sampler
            )
            folder = cfg.export.image_folder
            for path in write_synthetic_dataset(images, labels, output_dir, image_folder=folder, progress=True):
                print(f"wrote {path}")
        anomaly = cfg.anomaly
        if anomaly.scores_for is not None:
            images, labels = scored or test_split
            scores = anomaly_scores(module.net, images, labels, anomaly.score, anomaly.k, cfg.seed, cfg.batch_size)
            print(f"wrote {write_scores_csv(output_dir / 'anomaly_scores.csv', scores, labels, anomaly.score)}")
        if anomaly.demo:  # its AUROC a metric
            demo = anomaly_demo(module.net, *test_split, anomaly.score, anomaly.k, cfg.seed, cfg.batch_size)
            write_json_atomic(output_dir / "anomaly_demo.json", demo)
            metrics["anomaly_demo/auroc"] = demo["auroc"]
        write_json_atomic(output_dir / "metrics.json", {**metrics, "ckpt_path": str(Path(cfg.ckpt_path).resolve())})
        print(metrics_table(dict(sorted(metrics.items(), key=lambda item: item[0].count("/")))))  # per-digit rows last
        written = ["metrics.json", "samples.png", *(f"{name}.png" for name in pictures), "anomaly_demo.json"]
        list_results(output_dir, written, tensorboard=bool(cfg.projector))
        return metrics


def save_png(picture: torch.Tensor, path: Path) -> None:
    """A PNG written as every result is: to a temporary name, renamed once complete."""
    with atomic_path(path) as temporary:
        save_image(picture, temporary, format="png")


def quality_report(
    model: Net,
    cfg: DictConfig,
    x: torch.Tensor,
    y: torch.Tensor,
    sampler: Sampler,
    train_labels: torch.Tensor | None = None,
) -> dict[str, float]:
    """test/fid, test/label_acc (both also per digit), test/nll_iw, with quality.cas test/cas and with
    quality.reconstructions test/fid_rec. train_labels: what quality.labels=train_frequencies counts."""
    quality, device = cfg.quality, model_device(model)
    cache = reference_cache_folder(quality.reference_cache, quality.cache_dir, "quality")
    with seeded_global_rng(cfg.seed, device):
        return generator_report(
            model,
            pixels(x).to(device),
            y.to(device),
            num_samples=quality.num_samples,
            features=quality.features,
            inception_weights=quality.inception_weights,
            iw_samples=quality.iw_samples,
            seed=cfg.seed,
            cas_per_digit=quality.cas_per_digit if quality.cas else 0,
            cas_epochs=quality.cas_epochs,
            sampler=sampler,
            resize=quality.resize,
            labels=quality.labels,
            stretch=quality.stretch,
            reconstructions=quality.reconstructions,
            train_labels=train_labels,
            cache=cache,
        )


def requested_pictures(
    model: Net, cfg: DictConfig, x: torch.Tensor, y: torch.Tensor, sampler: Sampler
) -> dict[str, torch.Tensor]:
    """The PNG images the config asks for, by file name (without .png)."""
    scale, pictures = cfg.picture_scale, {}
    if cfg.digits is not None:
        strings = digit_strings(model, cfg.digits, cfg.variants, cfg.seed, sampler)
        pictures["digits"] = for_people(rows_grid(strings), [f"style {row + 1}" for row in range(len(strings))], scale)
    if cfg.digit is not None:
        digit, variants = parse_digit(cfg.digit), digit_variants(model, cfg.digit, cfg.variants, cfg.seed, sampler)
        rows = -(-len(variants) // 10)  # ten to a row
        pictures[f"digit_{digit}"] = for_people(image_grid(variants), [str(digit)] * rows, scale)
    if cfg.latent_map:
        pictures.update(latent_map_images(model, x, y))
    if cfg.interpolate:
        across = [f"{digit} to {(digit + 1) % NUM_CLASSES}" for digit in range(NUM_CLASSES)]
        rows = {"interpolation_within_digit": DIGIT_ROWS, "interpolation_across_digits": across}
        for name, image in interpolation_images(model, cfg.interpolation_steps, cfg.seed).items():
            pictures[name] = for_people(image, rows[name], scale)
    if cfg.style_transfer:
        sources = first_of_each_digit(y)
        labels = [f"from {digit}" for digit in y[sources].tolist()]
        pictures["style_transfer"] = for_people(style_transfer_image(model, x[sources], y[sources]), labels, scale)
    return pictures
