"""The resolvers conf/ uses (`cvae.<function name>`), registered by a Hydra callback: Hydra builds its callbacks
before it resolves the launcher's or a job's output settings. Torch-free, so that Hydra stays quick to start."""

import os
import shlex
import sys
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import OmegaConf

CHECKOUT = Path(__file__).resolve().parents[2]


def launched_rank() -> int:
    """This process's global rank as torchrun (RANK) or srun (SLURM_PROCID) gives it; 0 when started alone."""
    return int(os.environ.get("RANK") or os.environ.get("SLURM_PROCID") or 0)


def on_rank_zero(value, elsewhere=None):
    """Under torchrun or srun every process runs train.py with Hydra; only rank 0 writes .hydra/ and train.log."""
    return value if launched_rank() == 0 else elsewhere


def python_path() -> str:
    """A DDP rank's or SLURM job's PYTHONPATH: this checkout, then the inherited absolute entries (not its cwd)."""
    inherited = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return os.pathsep.join([str(CHECKOUT), *(entry for entry in inherited if os.path.isabs(entry))])


def job_python() -> str:
    """The python of a SLURM job (submitit runs `<it> -u -m ...` where the command was typed): this one, importing
    what this process would and never from that folder (-P; Python 3.10 has no -P)."""
    safe = " -P" if sys.version_info >= (3, 11) else ""
    return f"env PYTHONPATH={shlex.quote(python_path())} {shlex.quote(sys.executable)}{safe}"


def launcher_env() -> dict:
    """A Ray member's environment variables (conf/hydra/launcher/ray.yaml): this process's, PYTHONPATH python_path()."""
    return {**{name: value for name, value in os.environ.items() if name[:4] != "RAY_"}, "PYTHONPATH": python_path()}


def slurm_gpus(accelerator: str, devices) -> int | None:
    """GPUs per node for SLURM (conf/hydra/launcher/slurm.yaml): the trainer's count on GPUs, else none (a GPU gres
    fails on a cluster without GPUs); `devices=-1` needs hydra.launcher.gpus_per_node."""
    count = device_count(devices)
    return count if accelerator in ("gpu", "cuda") and count else None


def slurm_tasks(devices, gpus_per_node: int | None) -> int:
    """One SLURM task per DDP process of a node, so that Lightning takes its ranks from SLURM and starts none."""
    return device_count(devices) or gpus_per_node or 1


def device_count(devices) -> int | None:
    """How many devices `trainer.devices` names; None for every device (-1, "auto"), whose count SLURM decides."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if isinstance(devices, str) and "," in devices:
        return len([device for device in devices.split(",") if device.strip()])
    count = int(devices) if str(devices).lstrip("-").isdigit() else -1
    return count if count > 0 else None


def register_resolvers() -> None:
    for resolver in (on_rank_zero, job_python, launcher_env, slurm_gpus, slurm_tasks):
        OmegaConf.register_resolver(f"cvae.{resolver.__name__}", resolver, replace=True)


class Resolvers(Callback):
    """Hydra callback: registers the resolvers when Hydra starts."""

    def __init__(self):
        register_resolvers()
