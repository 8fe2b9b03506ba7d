"""MNIST as a LightningDataModule: 55k/5k train/val from the training set, 10k test, pixels in [0, 1]. By default
each split is one uint8 tensor on the training device, served as floats by index slices: MNIST is so small that a
classic DataLoader's per-item PIL round trip costs more than the model. `loader=dataloader` keeps that classic path."""

from pathlib import Path

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets, transforms
from torchvision.datasets.utils import check_integrity

from cvae.data.batches import TRAIN_SIZE, EpochPermutation, TensorBatches, train_val_indices
from cvae.errors import DataError
from cvae.files import shown
from cvae.validate import check_at_most, check_choice, check_count, check_flag

LOADERS = ("memory", "dataloader")
# MD5 of the extracted IDX files, which torchvision reads without checking (it checks only the .gz it downloads)
MNIST_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


def verify_mnist_files(raw_dir: Path) -> None:
    """Refuse truncated or corrupted MNIST files by name, before a model ever trains on part of the data.
    Missing files are left to torchvision, which downloads them where it can."""
    for name, expected in MNIST_MD5.items():
        path = raw_dir / name
        if path.is_file() and not check_integrity(path, expected):
            raise DataError(
                f"{shown(path)} fails its checksum: it is truncated or corrupted. Replace it with "
                f"the original (or delete it and its .gz to download MNIST again)"
            )


class MNISTDataModule(pl.LightningDataModule):
    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5_000,
        split_seed: int = 12345,
        shuffle_seed: int = 0,
        loader: str = "memory",
        num_workers: int = 0,
        download: bool = True,
    ):
        super().__init__()
        check_choice(loader, LOADERS, "data.loader")
        check_count(eval_batch_size, "data.eval_batch_size")
        check_at_most(val_size, "data.val_size", TRAIN_SIZE - 1)
        check_count(num_workers, "data.num_workers", minimum=0)
        check_flag(download, "data.download")
        self.data_dir = Path(data_dir).expanduser()
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.val_size, self.split_seed, self.shuffle_seed = val_size, split_seed, shuffle_seed
        self.loader, self.num_workers, self.download = loader, num_workers, download
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor] | Dataset] = {}
        self.verified = False

    def mnist(self, train: bool) -> datasets.MNIST:
        transform = transforms.Compose([transforms.ToTensor(), torch.flatten]) if self.loader == "dataloader" else None
        raw_dir = self.data_dir / "MNIST" / "raw"
        if not self.verified:  # once per datamodule, not per stage and split: each check hashes all 55 MB
            verify_mnist_files(raw_dir)
            self.verified = all((raw_dir / name).is_file() for name in MNIST_MD5)
        try:
            return datasets.MNIST(self.data_dir, train=train, download=self.download, transform=transform)
        except RuntimeError as error:
            raise DataError(
                f"MNIST not found in {shown(raw_dir)} and could not be downloaded ({error}). Point "
                f"data.data_dir=PATH or CVAE_DATA_DIR at a folder holding MNIST/raw/ with the IDX files "
                f"(train-images-idx3-ubyte, ...)."
            ) from None

    def prepare_data(self) -> None:
        if self.download and not self.splits:  # once per node, before setup() runs on every rank
            self.mnist(train=True), self.mnist(train=False)

    def train_val_indices(self) -> tuple[torch.Tensor, torch.Tensor]:
        return train_val_indices(self.val_size, self.split_seed)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train_set, test_set = self.mnist(train=True), self.mnist(train=False)
        train_idx, val_idx = self.train_val_indices()
        self.splits = {"train": Subset(train_set, train_idx), "val": Subset(train_set, val_idx), "test": test_set}
        if self.loader == "memory":  # each split as (images, labels) tensors on the training device
            device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
            self.splits = {name: tuple(data.to(device) for data in split_tensors(self, name)) for name in self.splits}

    def batches(self, split: str) -> TensorBatches | DataLoader:
        shuffle = split == "train"
        batch_size = self.batch_size if shuffle else self.eval_batch_size
        rank, world_size = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        size = len(self.splits[split]) if self.loader == "dataloader" else len(self.splits[split][1])
        sampler = EpochPermutation(size, shuffle, self.shuffle_seed, rank, world_size)
        if self.loader == "dataloader":
            return DataLoader(
                self.splits[split],
                batch_size=batch_size,
                sampler=sampler,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                pin_memory=torch.cuda.is_available(),
            )
        images, labels = self.splits[split]
        return TensorBatches(images, labels, batch_size, sampler)

    def train_dataloader(self):
        return self.batches("train")

    def val_dataloader(self):
        return self.batches("val")

    def test_dataloader(self):
        return self.batches("test")


def split_tensors(datamodule: MNISTDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A set-up split as uint8 images (N, 28, 28) and labels, whichever data.loader set it up."""
    data = datamodule.splits[split]
    if isinstance(data, Subset):
        return data.dataset.data[data.indices], data.dataset.targets[data.indices]
    return (data.data, data.targets) if hasattr(data, "targets") else data
