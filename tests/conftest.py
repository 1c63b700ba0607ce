"""Shared fixtures: where the installed console scripts are, and a clean env."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def script(name: str) -> str:
    """Path of a console script installed next to the running Python."""
    path = BIN / name
    if not path.exists():
        pytest.fail(
            f"{name} is not installed next to {sys.executable}; run pip install -e '.[test]'"
        )
    return str(path)


@pytest.fixture(scope="session")
def lorch_bin() -> str:
    return script("lorch")


@pytest.fixture(scope="session")
def mockagent_bin() -> str:
    return script("mockagent")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment for subprocesses: no failpoints or planted bugs leaking in."""
    for var in ("LORCH_CRASH_AT", "LORCH_PLANT_BUG", "MOCKAGENT_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env
