"""The conditional VAE: networks, priors, ELBO and IW bound (cvae.py), the LightningModule that trains it
(module.py) and its posterior-collapse diagnostics (posterior.py). Imports nothing of cvae but the foundation
(errors, seeding)."""
