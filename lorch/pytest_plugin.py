"""pytest plugin for projects that use lorch (registered as the ``lorch`` entry point).

Import-light on purpose: pytest loads it in every session, so lorch itself is
imported only inside the fixtures that need it.

Fixtures:

- ``lorch_scenario(name_or_path) -> Path``: a fresh workspace made from a scenario;
- ``lorch_cli(*args, workspace=..., env=...) -> CompletedProcess``: run ``lorch``
  as a subprocess (with the ``mockagent`` next to it on PATH).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.fixture
def lorch_scenario(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: ``lorch_scenario("review-loop")`` → a fresh workspace of that scenario."""

    def make(name_or_path: str) -> Path:
        from lorch.scenarios import materialize

        ws = tmp_path_factory.mktemp("lorch-ws")
        materialize(name_or_path, ws)
        return ws

    return make


@pytest.fixture
def lorch_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``lorch ARGS…`` in a workspace; returns the completed process (text)."""

    def run(
        *args: str, workspace: Path, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        full_env = {**os.environ, **(env or {})}
        full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
        cmd: list[Any] = [_bin("lorch"), *args, "--workspace", str(workspace)]
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)

    return run
