"""Evaluate a checkpoint on the MNIST test set: python evaluate.py ckpt_path=PATH. See conf/evaluate.yaml."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cvae.run.cli import environment_from_where_typed, run_task
from cvae.trust import HYDRA_TARGETS, import_no_code_from_run_dirs

environment_from_where_typed()
import_no_code_from_run_dirs()  # a run dir is data: no pkg:// search path or planted module imports from it
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(config_path="conf", config_name="evaluate", execution_whitelist=HYDRA_TARGETS)
def main(cfg: DictConfig) -> None:
    # the evaluation code (torch, Lightning: seconds) is imported once Hydra's RunDirCheck has checked the config
    from cvae.run.evaluate import evaluate

    run_task(evaluate, cfg)


if __name__ == "__main__":
    main()
