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
