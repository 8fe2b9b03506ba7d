"""Generation and exploration with a trained model, as functions that return tensors (digits.py, latent.py,
anomaly.py, export.py) and the pictures and Projector files made from them (figures.py, projector.py).
Imports cvae.model, cvae.sampling and the foundation; matplotlib and PIL are imported only here."""

# choices and file kinds the config checks need; here, so that they import no torch
SCORES = ("nelbo", "iw")  # anomaly.score
IMAGE_SET_SUFFIXES = (".pt", ".npz")  # anomaly.scores_for
