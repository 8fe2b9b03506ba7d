"""The fixed reference MNIST classifier behind FID (its penultimate features), label accuracy and CAS. Its weights,
trained once by `python -m cvae.metrics.classifier --data-dir PATH`, are committed and checked against WEIGHTS_SHA256
whenever they load: a metric computed with other weights would not be comparable."""

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy
from torchvision import datasets

from cvae.errors import DataError
from cvae.files import file_sha256, save_torch_atomic
from cvae.model.cvae import pixels

WEIGHTS_PATH = Path(__file__).parent / "weights" / "mnist_classifier.pt"
WEIGHTS_SHA256 = "cacf0bfdae93cba03e3489f447082ac94afed4c368482b851040038b02537bb0"


class ReferenceClassifier(nn.Module):
    """Two conv layers and a 128-unit feature layer, about 1.5 M multiply-adds per digit: FID on 10k images
    takes about a second on CPU. The second conv strides instead of pooling: 4x fewer operations."""

    num_features = 128

    def __init__(self):
        super().__init__()
        # pool before the ReLU: the same numbers (max and ReLU commute), a quarter of the ReLU's work, and ReLUs in
        # place: the same features, faster (docs/speed.md)
        self.conv = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.MaxPool2d(2),  # 32 x 14 x 14
            nn.ReLU(inplace=True),
            nn.Conv2d(32, 64, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),  # 64 x 7 x 7
        )
        self.features_layer = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.25), nn.Linear(64 * 7 * 7, self.num_features), nn.ReLU()
        )
        self.head = nn.Sequential(nn.Dropout(0.25), nn.Linear(self.num_features, 10))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations of images in [0, 1], shape (B, 1, 28, 28) or (B, 784)."""
        return self.features_layer(self.conv(images.reshape(-1, 1, 28, 28)))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))


def load_reference_classifier(path: Path = WEIGHTS_PATH, expected_sha256: str = WEIGHTS_SHA256) -> ReferenceClassifier:
    """The committed classifier, in eval mode, after checking its weights are the ones its figures came from."""
    if not path.is_file():
        raise DataError(f"reference classifier weights {path} are missing; restore them from git")
    if file_sha256(path) != expected_sha256:
        raise DataError(
            f"reference classifier weights {path} do not match their checksum; restore them from git "
            f"(or, to adopt new weights on purpose, update WEIGHTS_SHA256 in {Path(__file__).name})"
        )
    classifier = ReferenceClassifier()
    classifier.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    # channels_last: oneDNN's fast kernels for these convolutions and the max-pool, about 4x faster features on
    # CPU (FID of 10k digits included) for the same features up to float rounding (~1e-6)
    return classifier.to(memory_format=torch.channels_last).eval().requires_grad_(False)


def random_shifts(images: torch.Tensor, max_pixels: int) -> torch.Tensor:
    """Each image translated by up to max_pixels in x and y: the augmentation that lifts a small CNN past 99 %."""
    shifts = (torch.rand(len(images), 2, device=images.device) * 2 - 1) * (2 * max_pixels / 28)
    theta = torch.eye(2, 3, device=images.device).repeat(len(images), 1, 1)
    theta[:, :, 2] = shifts
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, align_corners=False)


def fit_classifier(
    images: torch.Tensor, labels: torch.Tensor, epochs: int, seed: int, batch_size: int = 128, max_shift: int = 0
) -> ReferenceClassifier:
    """A ReferenceClassifier trained from scratch on images (N, 1, 28, 28) in [0, 1]: Adam with a learning rate
    decaying to zero, optionally on randomly shifted digits. For the reference classifier and for CAS."""
    torch.manual_seed(seed)
    classifier = ReferenceClassifier().to(images.device).train()
    optimizer = torch.optim.Adam(classifier.parameters(), lr=1e-3)
    steps = epochs * -(-len(labels) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    for _ in range(epochs):
        for batch in torch.randperm(len(labels), device=images.device).split(batch_size):
            x = random_shifts(images[batch], max_shift) if max_shift else images[batch]
            loss = F.cross_entropy(classifier(x), labels[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    return classifier.eval().requires_grad_(False)


@torch.no_grad()
def accuracy(classifier: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 2000) -> float:
    metric = MulticlassAccuracy(10, average="micro").to(images.device)
    for x, y in zip(images.split(batch_size), labels.split(batch_size)):
        metric.update(classifier(x).argmax(1), y)
    return metric.compute().item()


def mnist_tensors(data_dir: str, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    mnist = datasets.MNIST(data_dir, train=train, download=True)
    return pixels(mnist.data).view(-1, 1, 28, 28), mnist.targets


def main() -> None:
    parser = argparse.ArgumentParser(description="Train the reference MNIST classifier (run once; commit weights).")
    parser.add_argument("--data-dir", default="data", help="folder holding MNIST/raw/")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--max-shift", type=int, default=2, help="random translation, pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=WEIGHTS_PATH)
    args = parser.parse_args()
    classifier = fit_classifier(
        *mnist_tensors(args.data_dir, train=True), epochs=args.epochs, seed=args.seed, max_shift=args.max_shift
    )
    test_accuracy = accuracy(classifier, *mnist_tensors(args.data_dir, train=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    save_torch_atomic(args.out, classifier.state_dict())
    print(f"test accuracy {test_accuracy:.4f}; weights {args.out} sha256 {file_sha256(args.out)}")


if __name__ == "__main__":
    main()
