"""The commands README gave before the package was split into layers still work, and say their new names."""

import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.parametrize(
    ("old", "new", "arguments"),
    [
        ("cvae.sweep", "cvae.run.sweep", []),  # no sweep dir: the usage line, exit 2, from either name
        ("cvae.classifier", "cvae.metrics.classifier", ["--help"]),
        ("cvae.benchmark", "benchmarks.speed", ["--help"]),
    ],
)
def test_an_old_command_runs_the_new_one_with_a_note(old, new, arguments):
    def run(module):
        return subprocess.run([sys.executable, "-m", module, *arguments], cwd=ROOT, capture_output=True, text=True)

    before, after = run(old), run(new)
    assert before.returncode == after.returncode and before.stdout == after.stdout
    assert f"note: `python -m {old}` is now `python -m {new}`" in before.stderr
    assert before.stderr.replace(before.stderr.splitlines()[0] + "\n", "") == after.stderr
