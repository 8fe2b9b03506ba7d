"""The conditional VAE (cvae.py), its networks (mlp.py, conv.py on network.py), the LightningModule that trains them
(module.py) with its posterior-collapse diagnostics (posterior.py), and checkpoints as data (checkpoint.py)."""
