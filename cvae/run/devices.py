"""Which devices a job trains on when several jobs share one machine."""

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


def member_devices(trainer_cfg: DictConfig):
    """`trainer.devices` for this job: under hydra/launcher=joblib, whose members train side by side, member k takes
    GPUs k*n, k*n+1, ... (mod the GPUs there are) for a count of n, instead of all sharing cuda:0."""
    devices = trainer_cfg.devices
    if not (isinstance(devices, int) and devices > 0 and trainer_cfg.accelerator in ("auto", "gpu", "cuda")):
        return devices
    if not (HydraConfig.initialized() and "JoblibLauncher" in str(HydraConfig.get().launcher.get("_target_"))):
        return devices
    gpus = torch.cuda.device_count()
    if gpus == 0:
        return devices
    first = HydraConfig.get().job.num * devices
    return [(first + offset) % gpus for offset in range(devices)]
