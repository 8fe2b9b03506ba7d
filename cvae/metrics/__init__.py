"""How good a generator is, measured with a fixed reference network: FID features, label accuracy, CAS, the IW
bound. Imports cvae.model, cvae.sampling and the foundation."""
