"""Shared fixtures: the real MNIST files, Hydra configs composed as the entry points compose them, and one
short real training run that several tests inspect."""

import os
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
# the tests plant callbacks of their own (+callbacks.x._target_=tests.<module>.<class>), in train.py runs too:
# trusted as a user trusts their own package (cvae/run/build.py)
os.environ["CVAE_TRUSTED_TARGETS"] = "tests.*"
# a relative CVAE_DATA_DIR (README's `export CVAE_DATA_DIR=../shared/data`) means relative to where pytest was typed,
# as for train.py: made absolute once, here, for the tests that run commands in other folders
if os.environ.get("CVAE_DATA_DIR"):
    os.environ["CVAE_DATA_DIR"] = os.path.abspath(os.environ["CVAE_DATA_DIR"])
# pytest-xdist runs the tests in one process per core (addopts: -n auto): each, and the commands it starts, gets its
# share of the cores, as a joblib sweep's members do, instead of every process spinning a thread per core
if "PYTEST_XDIST_WORKER_COUNT" in os.environ and "OMP_NUM_THREADS" not in os.environ:
    cores = len(os.sched_getaffinity(0))
    os.environ["OMP_NUM_THREADS"] = str(max(1, cores // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

# A few batches of each split: enough to exercise every part of a run on real data in seconds.
QUICK_RUN = [
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=5",
    "trainer.limit_val_batches=2",
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
    "callbacks.generation_quality.num_samples=1000",
]
# for runs that pick another callbacks group: QUICK_RUN without its setting of a default callback
QUICK_RUN_ANY_CALLBACKS = [override for override in QUICK_RUN if not override.startswith("callbacks.")]
# evaluate.py on a thousand generated digits and a 5-sample IW bound: every figure, in seconds
QUICK_EVALUATION = [
    "trainer.accelerator=cpu",
    "trainer.enable_progress_bar=false",
    "quality.num_samples=1000",
    "quality.iw_samples=5",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The machine's one SLURM cluster, PostgreSQL server and Ray ports: their tests run in one worker, in turn
    (`--dist loadgroup`), so that no test waits in a queue behind another's jobs."""
    for item in items:
        if any(item.get_closest_marker(name) for name in ("slurm", "postgres", "ray")):
            item.add_marker(pytest.mark.xdist_group("services"))


@contextmanager
def process_state_kept():
    """The environment and the SIGINT handler as they were: a library that sets a variable (MLflow's tracking URI, W&B's
    service) or a launch that ignores SIGINT in this process would otherwise reach the commands later tests start."""
    environment, sigint = dict(os.environ), signal.getsignal(signal.SIGINT)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environment)
        if sigint is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, sigint)


@pytest.fixture(autouse=True, scope="module")
def module_keeps_process_state():
    """What a module's fixtures change (they are set up before any test's own fixtures) ends with the module."""
    with process_state_kept():
        yield


@pytest.fixture(autouse=True)
def test_keeps_process_state():
    with process_state_kept():
        yield


@pytest.fixture(scope="session")
def data_dir() -> str:
    """The MNIST folder: CVAE_DATA_DIR, else the project's shared copy, else data/ (downloaded)."""
    shared = ROOT.parent / "shared" / "data"
    return os.environ.get("CVAE_DATA_DIR") or str(shared if shared.exists() else ROOT / "data")


def compose_config(config_name: str, overrides: list[str], output_dir: Path) -> DictConfig:
    """The config an entry point would get, with its output dir redirected to a test folder."""
    with initialize_config_dir(str(CONF_DIR)):
        cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        del cfg.hydra
    return cfg


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, data_dir) -> tuple[Path, dict]:
    """A real two-epoch training run on a slice of MNIST: its output dir and the metrics train() returned."""
    from cvae.run.train import train

    output_dir = tmp_path_factory.mktemp("run")
    cfg = compose_config("train", [*QUICK_RUN, f"data.data_dir={data_dir}", "latent_dim=3"], output_dir)
    return output_dir, train(cfg)
