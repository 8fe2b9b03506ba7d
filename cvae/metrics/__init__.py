"""How good a generator is, measured with a fixed reference network: FID features, label accuracy, CAS, the IW
bound. Imports cvae.model, cvae.sampling and the foundation; this file is torch-free (the config checks and the
sweep summary, which Hydra builds at start-up, import it)."""

# the choices of quality.features; here, not in generation.py, so that the config checks import no torch
FEATURE_EXTRACTORS = ("mnist", "inception")


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
