"""Train the conditional VAE: python train.py [key=value ...] [-m for sweeps]. See conf/train.yaml."""
import os
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parent))


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float:
    from cvae.training import train  # imported here so `--help` and config errors come back fast

    metrics = train(cfg)
    return metrics[cfg.optimized_metric]


if __name__ == "__main__":
    main()
