"""A conditional VAE on MNIST. `cvae.load(ckpt)`: a trained checkpoint ready to draw (cvae/api.py)."""

import importlib


def __getattr__(name: str):
    # on first use only: importing one cvae module (the LightningModule, say) must not import the whole package
    if name in ("api", "load"):
        api = importlib.import_module("cvae.api")
        return api if name == "api" else api.load
    raise AttributeError(f"module 'cvae' has no attribute {name!r}")
