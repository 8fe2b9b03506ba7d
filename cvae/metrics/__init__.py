"""How good a generator is, measured with a fixed reference network: FID features, label accuracy, CAS, the IW
bound. Imports cvae.model, cvae.sampling and the foundation; this file is torch-free (the config checks and the
sweep summary, which Hydra builds at start-up, import it)."""

# the choices of quality.features; here, not in generation.py, so that the config checks import no torch
FEATURE_EXTRACTORS = ("mnist", "inception")
# The 28 -> 299 resize of quality.features=inception: tf1, TensorFlow 1's resize_bilinear (no half-pixel centres),
# as the published MNIST FIDs ran it, in torch-fidelity's exact copy; antialias, torchmetrics' default (for an
# upsampling, plain bilinear with half-pixel centres). Half an input pixel apart: docs/literature.md.
RESIZES = ("tf1", "antialias")
# the labels of the generated digits: the same count of each (this project's), or each digit's share of the
# training split (what an unconditional model's samples hold, for the published comparison)
LABELS = ("balanced", "train_frequencies")


def figure(name: str, value) -> str:
    """A metric as docs/results.md writes it, the same in every table a command prints: accuracies (label_acc, CAS)
    in per cent, FIDs to one decimal, AUROC to three, counts as integers, nats to two decimals. The files
    (metrics.json, summary.csv) keep the exact values, accuracies as fractions."""
    if value is None:
        return ""
    if not isinstance(value, float):
        return str(value)
    kind = name.rsplit("/", 1)[-1] if "digit/" not in name and "dim/" not in name else name.split("/")[-2]
    if "acc" in kind or kind.startswith("cas"):
        return f"{100 * value:.2f} %"
    if "fid" in kind:
        return f"{value:.1f}"
    if kind == "auroc":
        return f"{value:.3f}"
    if kind == "active_units":
        return f"{value:.0f}"
    return f"{value:.2f}"
