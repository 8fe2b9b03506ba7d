"""How good a generator is, measured with a fixed reference network: FID features, label accuracy, CAS, the IW
bound. Imports cvae.model, cvae.sampling and the foundation."""

# the choices of quality.features; here, not in generation.py, so that the config checks import no torch
FEATURE_EXTRACTORS = ("mnist", "inception")
