"""Lightning callbacks: images (sample grids, latent exploration), generation quality, the Projector, and the
safety callbacks every run gets; orphans.py ends a joblib sweep member whose launcher died. Imports cvae.model, data,
sampling, metrics, explore and the foundation."""
