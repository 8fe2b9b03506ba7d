"""The conditional VAE: the ELBO, the IW bound and sampling over any network (cvae.py), the networks, a file each
(mlp.py, conv.py, on the base in network.py), the LightningModule that trains them (module.py) and its
posterior-collapse diagnostics (posterior.py). Imports nothing of cvae but the foundation."""
