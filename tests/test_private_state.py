"""No write to another library's private state anywhere in the project's code (cvae/, the entry points, any
hydra_plugins/), no plugin code (a Hydra Sweeper's or Launcher's class, hydra_plugins/) writing any object's state
but its own, and every private read listed here with why no public API does its job: a new one fails this test, so
that it is a decision, not an accident."""

import ast

from tests.conftest import ROOT

# (file, what is read): why no public API does it
ALLOWED_READS = {
    ("cvae/run/launch.py", "pytorch_lightning.strategies.launchers.subprocess_script._SubprocessScriptLauncher"): (
        "Lightning exports no public name for the launcher that re-runs the script per rank, the only one "
        "launch_local_ranks replaces"
    ),
    ("cvae/run/launch.py", "torch.distributed.distributed_c10d._abort_process_group"): (
        "the only way to end a rank stuck in an NCCL collective once another rank died (destroy_process_group waits)"
    ),
    ("cvae/run/sweep.py", "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"): (
        "Hydra's own expansion of sweep overrides into members (split_arguments); no public function offers it"
    ),
}


def private_uses(source: str) -> tuple[set[str], set[str]]:
    """(reads, writes) of names with a leading underscore on anything but self / cls, and imports of such names
    or from such modules. Dunder names are Python's, not private state."""
    reads, writes = set(), set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store | ast.Del):
            names = ast.unparse(node).split(".")
            outside = names[2:] if names[0] in ("self", "cls") else names[1:]  # self._own is the object's own
            if any(map(is_private, outside)):
                writes.add(ast.unparse(node))
        elif isinstance(node, ast.Attribute) and is_private(node.attr):
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            reads.add(ast.unparse(node))
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if is_private(alias.name) or any(map(is_private, node.module.split("."))):
                    reads.add(f"{node.module}.{alias.name}")
    return reads, writes


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# the classes Hydra builds as plugins (by their bases' names: a subclass of another library's sweeper is one too)
PLUGIN_BASES = ("Sweeper", "Launcher", "Plugin", "ConfigSource")


def plugin_writes(source: str, everywhere: bool = False) -> set[str]:
    """Attribute writes other than `self.<name>` in plugin classes (or anywhere, for hydra_plugins/): a plugin that
    sets another object's state (`self.sweeper.n_trials = ...`, `search.job_idx = ...`) drives it from outside."""
    tree = ast.parse(source)
    scopes = (
        [tree]
        if everywhere
        else [
            node
            for node in ast.walk(tree)
            if isinstance(node, ast.ClassDef) and any(ast.unparse(base).endswith(PLUGIN_BASES) for base in node.bases)
        ]
    )
    return {
        ast.unparse(node)
        for scope in scopes
        for node in ast.walk(scope)
        if isinstance(node, ast.Attribute)
        and isinstance(node.ctx, ast.Store | ast.Del)
        and not (isinstance(node.value, ast.Name) and node.value.id == "self")
    }


def project_files() -> list:
    return sorted([*(ROOT / "cvae").rglob("*.py"), *ROOT.glob("*.py"), *(ROOT / "hydra_plugins").rglob("*.py")])


def package_uses() -> tuple[dict, dict]:
    reads, writes = {}, {}
    for path in project_files():
        source, name = path.read_text(), str(path.relative_to(ROOT))
        found_reads, found_writes = private_uses(source)
        found_writes |= plugin_writes(source, everywhere=name.startswith("hydra_plugins/"))
        reads.update({(name, read): None for read in found_reads})
        writes.update({(name, write): None for write in found_writes})
    return reads, writes


def test_the_package_writes_no_private_state():
    assert package_uses()[1] == {}


def test_every_private_read_is_listed_with_its_reason():
    assert set(package_uses()[0]) == set(ALLOWED_READS)


def test_the_scan_sees_writes_reads_and_imports():
    source = (
        "from pytorch_lightning.loops import _Loop\n"
        "trainer._signal_connector.received_sigterm = True\n"
        "loop._batches_that_stepped += 1\n"
        "self._mine = 1\n"
        "x = trainer.fit_loop._data_fetcher\n"
    )
    reads, writes = private_uses(source)
    assert writes == {"trainer._signal_connector.received_sigterm", "loop._batches_that_stepped"}
    assert reads == {"pytorch_lightning.loops._Loop", "trainer._signal_connector", "trainer.fit_loop._data_fetcher"}


def test_the_scan_sees_a_plugin_driving_another_plugin_from_outside():
    """What cvae/run/study.py did until issue 34: the Optuna plugin's loop counters set before its sweep ran."""
    source = (
        "class ContinuedOptunaSweeper(OptunaSweeper):\n"
        "    def sweep(self, arguments):\n"
        "        search = self.sweeper\n"
        "        search.n_trials = 3\n"
        "        self.sweeper.job_idx = 2\n"
        "        self.mine = 1\n"
        "class Other:\n"
        "    def f(self, x):\n"
        "        x.y = 1\n"
    )
    assert plugin_writes(source) == {"search.n_trials", "self.sweeper.job_idx"}
    assert plugin_writes(source, everywhere=True) == {"search.n_trials", "self.sweeper.job_idx", "x.y"}
    assert any(path.name == "sweeper.py" for path in project_files()), "the project's own sweeper is scanned"
