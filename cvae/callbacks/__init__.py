"""Lightning callbacks: images (sample grids, latent exploration), generation quality, the Projector, and the
safety callbacks every run gets; orphans.py ends a joblib sweep member whose launcher died. Imports cvae.model, data,
sampling, metrics, explore and the foundation. Only this file is torch-free: the sweep summary, which Hydra builds
at start-up, reads PRUNED_FILE from it."""

PRUNED_FILE = "pruned.json"  # in a pruned search member's dir (pruning.py): its trial and the epoch it stopped at
