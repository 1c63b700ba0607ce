"""aiohttp is loaded only when a gateway is: ``import lorch`` and the CLI never pay for it."""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import lorch.engine.gateway


def test_lorch_and_the_gateways_light_modules_do_not_import_aiohttp() -> None:
    code = (
        "import sys, lorch, lorch.app.cli, lorch.engine.gateway, "
        "lorch.engine.gateway.cassette, lorch.engine.gateway.replay, "
        "lorch.engine.gateway.providers, lorch.engine.gateway.normalize\n"
        "assert 'aiohttp' not in sys.modules, 'aiohttp imported'\n"
        "import lorch.engine.gateway.server\n"
        "assert 'aiohttp' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


ALLOWED = {
    "lorch.wire.redact",
    "lorch.store.atomic",
    "lorch.wire.canonical",
    "lorch.wire.errors",
    "lorch.wire.checksum",
}


def test_the_gateway_imports_only_the_wire_and_store_layers_of_lorch() -> None:
    # It lives in lorch/engine/gateway/ (DESIGN.md §12): nothing above the store may be
    # imported from it, nor from lorch.testing (tools import it, never the other way).
    for path in Path(lorch.engine.gateway.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                # `from lorch.store import atomic` imports lorch.store.atomic.
                names = [node.module]
                if node.module.startswith("lorch"):
                    spec = importlib.util.find_spec(node.module)
                    if spec is not None and spec.submodule_search_locations is not None:
                        names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                if name.startswith("lorch") and not name.startswith("lorch.engine.gateway"):
                    assert name in ALLOWED, f"{path.name} imports {name}"
