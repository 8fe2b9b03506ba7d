"""The lint and format checks: CI runs them before the tests, and pre-commit runs the same ruff."""

import re

import tomllib
import yaml

from tests.conftest import ROOT


def test_ci_lints_and_checks_the_format_before_the_tests():
    (command,) = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.endswith("pytest")]
    assert "&& ruff check . && ruff format --check . && pytest" in command


def test_pre_commit_runs_the_ruff_the_test_extra_pins():
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    (pinned,) = [
        re.fullmatch(r"ruff==(.+)", requirement).group(1) for requirement in test_extra if "ruff" in requirement
    ]
    (ruff,) = yaml.safe_load((ROOT / ".pre-commit-config.yaml").read_text())["repos"]
    assert ruff["repo"] == "https://github.com/astral-sh/ruff-pre-commit" and ruff["rev"] == f"v{pinned}"
    assert [hook["id"] for hook in ruff["hooks"]] == ["ruff-check", "ruff-format"]


def test_the_malicious_and_the_unsafe_lightning_versions_are_excluded_and_not_installed():
    """pytorch-lightning 2.6.2 and 2.6.3 were malicious uploads (advisory GHSA-w37p-236h-pfx3); up to 2.6.5,
    load_from_checkpoint runs code a checkpoint's _instantiator names (GHSA-qqmf-gpg7-g8gw)."""
    from importlib.metadata import version

    from packaging.requirements import Requirement

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (lightning,) = [Requirement(line) for line in dependencies if line.startswith("pytorch-lightning")]
    assert not any(lightning.specifier.contains(bad) for bad in ("2.6.1", "2.6.2", "2.6.3", "2.6.5"))
    assert lightning.specifier.contains("2.6.6")
    assert lightning.specifier.contains(version("pytorch-lightning"))
