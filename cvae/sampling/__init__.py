"""Where z comes from when the model generates: the prior (prior.py) or an ex-post mixture per digit (gmm.py).
Imports only cvae.model and the foundation."""

COVARIANCES = ("full", "diag")  # sampler.covariance; here, so that the config checks import no torch
