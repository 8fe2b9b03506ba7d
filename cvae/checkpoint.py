"""Load a checkpoint the project wrote, as data only: torch.load(weights_only=True) never runs code from it."""
from pathlib import Path

import torch

from cvae.lit_module import CVAELitModule


def load_module(path: str | Path) -> CVAELitModule:
    """The CVAELitModule a checkpoint describes: its hyperparameters rebuild the model, then its weights load."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass ckpt_path=<run dir>/checkpoints/best.ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated file, another format, or pickled code that weights_only refuses
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} is not a readable cvae checkpoint ({reason})") from None
    if not isinstance(checkpoint, dict) or not {"state_dict", "hyper_parameters"} <= checkpoint.keys():
        raise ValueError(f"{path} is not a cvae checkpoint: it lacks 'state_dict' and 'hyper_parameters'")
    module = CVAELitModule(**checkpoint["hyper_parameters"])
    try:
        module.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ValueError(f"{path} does not match the model its hyperparameters describe ({error})") from None
    return module.eval()
