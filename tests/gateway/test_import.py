"""aiohttp is loaded only when a gateway is: ``import lorch`` and the CLI never pay for it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import lorch.gateway


def test_lorch_and_the_gateways_light_modules_do_not_import_aiohttp() -> None:
    code = (
        "import sys, lorch, lorch.cli, lorch.gateway, lorch.gateway.cassette, "
        "lorch.gateway.replay, lorch.gateway.providers, lorch.gateway.normalize\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp imported'\n"
        "import lorch.gateway.server\n"
        "assert 'aiohttp' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


ALLOWED = {"lorch.redact", "lorch.atomic", "lorch.canonical", "lorch.errors", "lorch.checksum"}


def test_the_gateway_imports_only_the_wire_and_store_layers_of_lorch() -> None:
    # It moves to lorch/engine/gateway/ (DESIGN.md §12): nothing above the store may be
    # imported from it, nor from lorch.testing (tools import it, never the other way).
    for path in Path(lorch.gateway.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [
                    node.module if node.module != "lorch" else f"lorch.{a.name}" for a in node.names
                ]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("lorch") and not name.startswith("lorch.gateway"):
                    assert name in ALLOWED, f"{path.name} imports {name}"
