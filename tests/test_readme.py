"""README's set-up commands are the ones CI runs."""

import re

from tests.conftest import ROOT


def test_ci_runs_exactly_the_readme_test_command():
    readme_commands = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    train_command, test_command = [line for line in readme_commands.splitlines() if not line.startswith("#")]
    assert train_command.endswith("python train.py")
    assert test_command in (ROOT / ".ci" / "run").read_text().splitlines()
