"""The MNIST datamodule on the real files: split sizes, a fixed split, pixel range, both data paths, and the
in-memory epoch permutation (coverage, determinism, disjoint DDP shards)."""

from types import SimpleNamespace

import pytest
import torch

from cvae.data.batches import EpochPermutation, TensorBatches
from cvae.data.mnist import MNISTDataModule


@pytest.fixture(scope="module")
def datamodule(data_dir):
    datamodule = MNISTDataModule(data_dir=data_dir)
    datamodule.setup()
    return datamodule


def test_split_sizes(datamodule):
    assert {name: len(labels) for name, (_, labels) in datamodule.splits.items()} == {
        "train": 55_000,
        "val": 5_000,
        "test": 10_000,
    }


def test_split_is_fixed_disjoint_and_independent_of_the_run_seed(data_dir):
    first = MNISTDataModule(data_dir=data_dir, shuffle_seed=1).train_val_indices()
    second = MNISTDataModule(data_dir=data_dir, shuffle_seed=2).train_val_indices()
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    train_idx, val_idx = first
    assert len(set(train_idx.tolist()) | set(val_idx.tolist())) == 60_000
    other_split = MNISTDataModule(data_dir=data_dir, split_seed=7).train_val_indices()[1]
    assert not torch.equal(val_idx, other_split)


def test_batches_are_flat_pixels_in_unit_range_with_class_labels(datamodule):
    x, y = next(iter(datamodule.train_dataloader()))
    assert x.shape == (128, 784) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1 and x.max() > 0.99
    assert y.dtype == torch.int64 and set(y.tolist()) <= set(range(10))


def test_memory_and_dataloader_paths_yield_the_same_evaluation_data(data_dir, datamodule):
    classic = MNISTDataModule(data_dir=data_dir, loader="dataloader", eval_batch_size=500)
    classic.setup()
    for stage in ("val_dataloader", "test_dataloader"):
        fast_x, fast_y = next(iter(getattr(datamodule, stage)()))
        slow_x, slow_y = next(iter(getattr(classic, stage)()))
        torch.testing.assert_close(fast_x[:500], slow_x)
        assert torch.equal(fast_y[:500], slow_y)


def test_an_epoch_visits_every_training_image_once(datamodule):
    loader = datamodule.train_dataloader()
    labels = torch.cat([y for _, y in loader])
    assert len(labels) == 55_000 and len(loader) == 430
    assert torch.equal(labels.bincount(), datamodule.splits["train"][1].bincount())


def test_epoch_permutation_is_seeded_and_changes_with_the_epoch():
    order = EpochPermutation(1000, shuffle=True, seed=3)
    first = order.indices()
    assert torch.equal(first.sort().values, torch.arange(1000))
    assert torch.equal(first, EpochPermutation(1000, shuffle=True, seed=3).indices())
    order.set_epoch(1)
    assert not torch.equal(first, order.indices())
    assert not torch.equal(first, EpochPermutation(1000, shuffle=True, seed=4).indices())


@pytest.mark.parametrize("shuffle", [True, False])
def test_ddp_shards_are_disjoint_and_cover_the_epoch(shuffle):
    size, world_size = 1003, 4
    shards = [EpochPermutation(size, shuffle, seed=5, rank=rank, world_size=world_size) for rank in range(world_size)]
    for shard in shards:
        shard.set_epoch(2)
    indices = [shard.indices() for shard in shards]
    assert [len(i) for i in indices] == [len(shard) for shard in shards]
    union = torch.cat(indices)
    assert len(set(union.tolist())) == len(union), "shards overlap"
    if shuffle:  # equal steps on every rank: the tail that does not divide by world_size is dropped
        assert len({len(i) for i in indices}) == 1 and len(union) == size - size % world_size
    else:  # evaluation sees every image exactly once
        assert torch.equal(union.sort().values, torch.arange(size))


def test_tensor_batches_keep_the_last_short_batch():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1).expand(10, 28, 28).contiguous()
    batches = TensorBatches(images, torch.arange(10), 4, EpochPermutation(10, shuffle=False))
    assert [len(y) for _, y in batches] == [4, 4, 2] and len(batches) == 3


def test_tensor_batches_resume_in_the_middle_of_an_epoch_with_the_batches_left():
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1).expand(50, 28, 28).contiguous()

    def batches() -> TensorBatches:
        return TensorBatches(images, torch.arange(50), 8, EpochPermutation(50, shuffle=True, seed=1))

    interrupted = batches()
    interrupted.sampler.set_epoch(3)
    drawn = iter(interrupted)
    seen = [next(drawn)[1] for _ in range(2)]
    state = interrupted.state_dict()
    assert state == {"epoch": 3, "batches_drawn": 2}
    resumed = batches()
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(3)  # as Lightning does before the first batch
    uninterrupted = batches()
    uninterrupted.sampler.set_epoch(3)
    expected = [y for _, y in uninterrupted]
    assert [y.tolist() for y in seen + [y for _, y in resumed]] == [y.tolist() for y in expected]
    resumed.sampler.set_epoch(4)  # the next epoch starts from its first batch
    assert len([y for _, y in resumed]) == len(resumed)


def ranks_of(data_dir: str, loader: str, world_size: int = 2) -> list[MNISTDataModule]:
    """The datamodule as each DDP rank sets it up."""
    modules = []
    for rank in range(world_size):
        module = MNISTDataModule(data_dir=data_dir, loader=loader, shuffle_seed=7, eval_batch_size=1000)
        module.trainer = SimpleNamespace(
            global_rank=rank, world_size=world_size, strategy=SimpleNamespace(root_device=torch.device("cpu"))
        )
        module.setup()
        modules.append(module)
    return modules


@pytest.mark.parametrize("loader", ["memory", "dataloader"])
def test_under_ddp_each_evaluation_image_is_seen_once_and_training_shuffles_follow_seed_and_epoch(data_dir, loader):
    ranks = ranks_of(data_dir, loader)
    for split in ("val", "test"):
        labels = [torch.cat([y for _, y in getattr(module, f"{split}_dataloader")()]) for module in ranks]
        everything = MNISTDataModule(data_dir=data_dir)
        everything.setup()
        assert sum(len(y) for y in labels) == len(everything.splits[split][1]), "no image padded in twice"
        assert torch.equal(torch.cat(labels).bincount(), everything.splits[split][1].bincount())
    firsts = []
    for epoch in (0, 1):
        loaders = [module.train_dataloader() for module in ranks]
        for train_loader in loaders:
            train_loader.sampler.set_epoch(epoch)  # as Lightning does
        firsts.append([next(iter(train_loader))[1] for train_loader in loaders])
    reference = ranks_of(data_dir, "memory")[1].train_dataloader()
    reference.sampler.set_epoch(1)
    assert torch.equal(firsts[1][1], next(iter(reference))[1]), "both paths deal the same (seed, epoch) shards"
    assert not torch.equal(firsts[0][0], firsts[0][1]) and not torch.equal(firsts[0][0], firsts[1][0])


def test_missing_data_names_the_directory_and_the_fix(tmp_path):
    datamodule = MNISTDataModule(data_dir=str(tmp_path / "nowhere"), download=False)
    with pytest.raises(FileNotFoundError) as error:
        datamodule.setup()
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in message
    assert "data.data_dir" in message and "CVAE_DATA_DIR" in message


def test_unknown_loader_is_refused():
    with pytest.raises(ValueError, match="data.loader='pil'"):
        MNISTDataModule(loader="pil")
