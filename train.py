"""Train the conditional VAE: python train.py [key=value ...] [-m for sweeps]. See conf/train.yaml."""

import os
from pathlib import Path

import hydra
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from cvae.run.build import HYDRA_TARGETS

# A relative path means relative to where the command was typed: made absolute here, once, before Hydra may change
# into the run dir, so that DDP ranks and launched jobs, which inherit this environment, read the same files.
for variable in ("CVAE_DATA_DIR", "PROJECT_ROOT"):
    if os.environ.get(variable):
        os.environ[variable] = os.path.abspath(os.environ[variable])
if os.environ.get("PYTHONPATH"):  # an empty entry means this folder too, as Python reads it
    os.environ["PYTHONPATH"] = os.pathsep.join(map(os.path.abspath, os.environ["PYTHONPATH"].split(os.pathsep)))
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(config_path="conf", config_name="train", execution_whitelist=HYDRA_TARGETS)
def main(cfg: DictConfig) -> float:
    # imported here so that `--help` and Hydra's own config errors come back fast; the training code (torch,
    # Lightning: seconds) only after the config checks passed, so that a bad value is said in about a second
    from cvae.run.checks import TRAIN_RULES
    from cvae.run.cli import run_task

    resolve_from_where_typed(cfg, ("ckpt_path", "data.data_dir"))

    metrics = run_task("cvae.run.train:train", cfg, TRAIN_RULES)
    return metrics[cfg.optimized_metric]


def resolve_from_where_typed(cfg: DictConfig, keys: tuple[str, ...]) -> None:
    """A relative path given for one of these keys means relative to where the command was typed, not the run dir
    Hydra may have changed into (hydra.job.chdir=true); DDP ranks get it absolute. Interpolations and missing
    values are left as they are, for the config checks."""
    for key in keys:
        parent_key, _, leaf = key.rpartition(".")
        parent = OmegaConf.select(cfg, parent_key) if parent_key else cfg
        if not isinstance(parent, DictConfig) or leaf not in parent or OmegaConf.is_missing(parent, leaf):
            continue
        if not OmegaConf.is_interpolation(parent, leaf) and isinstance(parent[leaf], str) and parent[leaf]:
            parent[leaf] = to_absolute_path(parent[leaf])


if __name__ == "__main__":
    main()
