"""The tools' commands are imported only when used (issue 23 point 1, issue 26 point 1)."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from lorch.app import cli


def test_each_lazy_command_help_is_its_own_short_help() -> None:
    from lorch.app import configcli

    for name, (module, attr, short) in [*cli.TOOLS.items(), *configcli.COMMANDS.items()]:
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


# What a plain `lorch run` on NDJSON mock agents imports of lorch: a module added
# here is a deliberate choice (issue 26 point 1), not a slow drift.
NDJSON_RUN_IMPORTS = [
    "lorch",
    "lorch.agents",
    "lorch.agents.acp",
    "lorch.agents.acp.prompts",
    "lorch.agents.known_agents",
    "lorch.agents.ndjson",
    "lorch.agents.pipewriter",
    "lorch.agents.procs",
    "lorch.agents.registry",
    "lorch.agents.sandbox",
    "lorch.agents.transport",
    "lorch.app",
    "lorch.app.cli",
    "lorch.app.config",
    "lorch.app.drift",
    "lorch.app.firstrun",
    "lorch.app.launch",
    "lorch.app.runner",
    "lorch.app.scenarios",
    "lorch.core",
    "lorch.core.build_loop",
    "lorch.core.commands",
    "lorch.core.intake",
    "lorch.core.policy",
    "lorch.core.state",
    "lorch.core.steps",
    "lorch.core.workflow",
    "lorch.engine",
    "lorch.engine.asking",
    "lorch.engine.derived",
    "lorch.engine.discovery",
    "lorch.engine.intake_steps",
    "lorch.engine.loop",
    "lorch.engine.provenance",
    "lorch.engine.recorder",
    "lorch.engine.roster",
    "lorch.engine.timing",
    "lorch.engine.transcript",
    "lorch.engine.turn_checkpoints",
    "lorch.store",
    "lorch.store.atomic",
    "lorch.store.checkpoint",
    "lorch.store.derived_files",
    "lorch.store.failpoint",
    "lorch.store.faults",
    "lorch.store.layout",
    "lorch.store.ledger",
    "lorch.store.paths",
    "lorch.store.safefs",
    "lorch.store.snapshot",
    "lorch.store.storegit",
    "lorch.store.watch",
    "lorch.store.wslock",
    "lorch.wire",
    "lorch.wire._validators",
    "lorch.wire._validators.command",
    "lorch.wire._validators.config",
    "lorch.wire._validators.event",
    "lorch.wire._validators.heartbeat",
    "lorch.wire._validators.index",
    "lorch.wire._validators.receipt",
    "lorch.wire._validators.run_state",
    "lorch.wire.canonical",
    "lorch.wire.checksum",
    "lorch.wire.errors",
    "lorch.wire.protocol",
    "lorch.wire.redact",
    "lorch.wire.resources",
    "lorch.wire.schemas",
    "lorch.wire.textsafe",
    "lorch.wire.vocabulary",
]
# Never in such a run: the tools, the ACP SDK, the gateway's HTTP stack, schema engines.
NEVER = (
    "lorch.crashtest",
    "lorch.conformance",
    "lorch.testing",
    "lorch.engine.gateway",
    "acp",
    "pydantic",
    "aiohttp",
    "jsonschema",
    "fastjsonschema",
    "anthropic",
    "hypothesis",
)


def test_a_plain_ndjson_run_imports_only_what_it_uses(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from lorch.app.cli import main\n"
        "rc = main(['run', '--workspace', sys.argv[1]])\n"
        "print('MODULES', sorted(sys.modules))\n"
        "sys.exit(rc)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("MODULES "))
    modules = ast.literal_eval(line.removeprefix("MODULES "))
    assert sorted(m for m in modules if m.startswith("lorch")) == NDJSON_RUN_IMPORTS
    heavy = sorted(m for m in modules if m.split(".")[0] in NEVER or m.startswith(NEVER))
    assert heavy == []
