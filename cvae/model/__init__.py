"""The conditional VAE: networks, priors, ELBO and IW bound (cvae.py), the LightningModule that trains it
(module.py) and its posterior-collapse diagnostics (posterior.py). Imports nothing of cvae but the foundation
(errors, seeding)."""

# the choices of model.architecture; here, not in cvae.py, so that the config checks import no torch
ARCHITECTURES = ("mlp", "conv")
