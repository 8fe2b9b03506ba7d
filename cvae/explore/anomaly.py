"""Anomaly scores (how unlike a digit y an image is, in nats), a CSV of them, and a demo whose AUROC tells real test
digits from rotated ones."""

import csv
from pathlib import Path

import torch
from torchmetrics.functional import auroc

from cvae.explore import SCORES
from cvae.files import atomic_path
from cvae.model.cvae import Net, importance_weighted_nll, model_device, negative_elbo, pixels
from cvae.model.network import IMAGE_SHAPE
from cvae.seeding import seeded_global_rng
from cvae.validate import check_choice, check_count


@torch.no_grad()
def anomaly_scores(
    model: Net,
    x: torch.Tensor,
    y: torch.Tensor,
    score: str = "nelbo",
    k: int = 10,
    seed: int = 0,
    batch_size: int = 1000,
) -> torch.Tensor:
    """Per image, in nats (higher: less like a digit y): `nelbo`, the -ELBO averaged over k draws of z from
    q(z | x, y), or `iw`, the k-sample importance-weighted bound on -log p(x | y). (N,) on the CPU."""
    check_choice(score, SCORES, "anomaly.score")
    check_count(k, "anomaly.k")
    scores = []
    device = model_device(model)
    with seeded_global_rng(seed, device):
        for xb, yb in zip(x.split(batch_size), y.split(batch_size)):
            xb, yb = pixels(xb.to(device)), yb.to(device)
            if score == "iw":
                scores.append(importance_weighted_nll(model, xb, yb, k).cpu())
            else:
                scores.append(torch.stack([negative_elbo(model, xb, yb)["nelbo"] for _ in range(k)]).mean(0).cpu())
    return torch.cat(scores)


def write_scores_csv(path: str | Path, scores: torch.Tensor, labels: torch.Tensor, score: str = "nelbo") -> Path:
    """A CSV with a row per image: its index in the set, its label and its score (nats)."""
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["index", "label", score])
        writer.writerows(
            [index, label, f"{value:.4f}"] for index, (label, value) in enumerate(zip(labels.tolist(), scores.tolist()))
        )
    return path


def anomaly_demo(model: Net, x: torch.Tensor, y: torch.Tensor, score="nelbo", k=10, seed=0, batch_size=1000) -> dict:
    """AUROC of the score at telling real images (negatives) from their corrupted copies (positives); the options
    are anomaly_scores'."""
    # each digit turned a quarter counter-clockwise, label kept: rotation keeps the amount of ink (any pixel count
    # would flag noise or inversion), so only a model of digits can tell; it also separated best against wrong
    # labels and mirroring, on models trained from a few batches to 2 epochs
    corrupted = torch.rot90(x.reshape(-1, *IMAGE_SHAPE[1:]), 1, dims=(1, 2))
    real, rotated = (anomaly_scores(model, images, y, score, k, seed, batch_size) for images in (x, corrupted))
    scores = torch.cat([real, rotated]).double()
    # torchmetrics squashes scores outside [0, 1] with a sigmoid, which saturates at nats in the hundreds
    # into ties; a min-max rescale keeps their order
    scaled = (scores - scores.min()) / (scores.max() - scores.min()).clamp(min=1e-12)
    is_corrupted = torch.cat([torch.zeros(len(real)), torch.ones(len(rotated))]).long()
    return {
        "auroc": auroc(scaled, is_corrupted, task="binary").item(),
        "score": score,
        "k": k,
        "images": len(real),
        "corruption": "rotated by 90 degrees (counter-clockwise), true label kept",
        "mean_score_real": real.mean().item(),
        "mean_score_corrupted": rotated.mean().item(),
    }
