"""Train the conditional VAE: python train.py [key=value ...] [-m for sweeps]. See conf/train.yaml."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cvae.run.cli import environment_from_where_typed, run_task
from cvae.trust import HYDRA_TARGETS, import_no_code_from_run_dirs

environment_from_where_typed()
import_no_code_from_run_dirs()  # a run dir is data: no pkg:// search path or planted module imports from it
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(config_path="conf", config_name="train", execution_whitelist=HYDRA_TARGETS)
def main(cfg: DictConfig) -> float:
    # imported here, once Hydra's RunDirCheck has checked the config: a bad value is said in about a second, before
    # the training code's imports (torch, Lightning: seconds); --help and Hydra's own errors come back fast too
    from cvae.run.train import train

    # nan: a sweep member that failed (Optuna records its trial failed)
    return run_task(train, cfg).get(cfg.optimized_metric, float("nan"))


if __name__ == "__main__":
    main()
    from cvae.run.sweep import FAILED_SWEEPS

    sys.exit(1 if FAILED_SWEEPS else 0)  # a sweep a member of which failed (each said its line; Hydra went on)
