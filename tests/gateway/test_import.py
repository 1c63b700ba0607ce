"""aiohttp is loaded only when a gateway is: ``import lorch`` and the CLI never pay for it."""

from __future__ import annotations

import subprocess
import sys


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
