"""Evaluate a checkpoint on the MNIST test set: python evaluate.py ckpt_path=PATH. See conf/evaluate.yaml."""

import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cvae.run.build import HYDRA_TARGETS

# A relative path means relative to where the command was typed: made absolute here, once, before Hydra may change
# into the run dir, so that DDP ranks and launched jobs, which inherit this environment, read the same files.
for variable in ("CVAE_DATA_DIR", "PROJECT_ROOT"):
    if os.environ.get(variable):
        os.environ[variable] = os.path.abspath(os.environ[variable])
if os.environ.get("PYTHONPATH"):  # an empty entry means this folder too, as Python reads it
    os.environ["PYTHONPATH"] = os.pathsep.join(map(os.path.abspath, os.environ["PYTHONPATH"].split(os.pathsep)))
os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(config_path="conf", config_name="evaluate", execution_whitelist=HYDRA_TARGETS)
def main(cfg: DictConfig) -> None:
    # the evaluation code (torch, Lightning: seconds) is imported only after the config checks passed
    from cvae.run.checks import EVALUATE_RULES
    from cvae.run.cli import run_task

    run_task("cvae.run.evaluate:evaluate", cfg, EVALUATE_RULES)


if __name__ == "__main__":
    main()
