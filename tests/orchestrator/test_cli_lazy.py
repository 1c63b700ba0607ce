"""The tools' commands are imported only when used (issue 23 point 1, issue 26 point 1)."""

from __future__ import annotations

import importlib
import subprocess
import sys

from click.testing import CliRunner

from lorch.app import cli


def test_each_lazy_command_help_is_its_own_short_help() -> None:
    for name, (module, attr, short) in cli.TOOLS.items():
        command = getattr(importlib.import_module(module), attr)
        assert command.get_short_help_str(1000) == short, name


def test_help_lists_the_tools_without_importing_them() -> None:
    code = (
        "import sys\n"
        "from lorch.app.cli import main\n"
        "rc = main(['--help'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('lorch.crashtest', "
        "'lorch.conformance', 'lorch.app.configcli'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert "crashtest" in out and "conformance" in out and "config " in out
    assert out.rstrip().endswith("[]")


def test_a_tool_command_runs_through_the_lazy_group() -> None:
    result = CliRunner().invoke(cli.cli, ["crashtest", "--help"])
    assert result.exit_code == 0
    assert "SCENARIO" in result.output
