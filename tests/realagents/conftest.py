"""Fixtures for the real-agent tests: the pinned npm install and a scripted endpoint."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lorch.testing.model_endpoint import ModelEndpoint
from lorch.testing.model_script import Script
from tests.realagents import adapters


@pytest.fixture(scope="session")
def claude_acp() -> list[str]:
    """The command that starts the pinned Claude Code ACP adapter (installed if needed)."""
    return [str(adapters.claude_agent_acp(_installed()))]


@pytest.fixture(scope="session")
def gemini_cli() -> list[str]:
    """The command that starts the pinned Gemini CLI in ACP mode (installed if needed)."""
    return [str(adapters.gemini(_installed())), "--acp"]


@pytest.fixture(scope="session")
def codex_acp() -> list[str]:
    """The command that starts the pinned Codex ACP adapter (installed if needed)."""
    return [str(adapters.codex_acp(_installed()))]


def _installed() -> Path:
    """The pinned npm install's root; without node, a skip (a failure in CI)."""
    missing = adapters.without_node(os.environ)
    if missing is not None:
        action, why = missing
        pytest.fail(why) if action == "fail" else pytest.skip(why)
    try:
        return adapters.ensure_installed()
    except adapters.InstallError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def endpoint_for(tmp_path: Path) -> Iterator[Any]:
    """Start a scripted model endpoint (closed at the end of the test)."""
    started: list[ModelEndpoint] = []

    def start(script: dict[str, Any], name: str = "endpoint") -> ModelEndpoint:
        ep = ModelEndpoint(Script.from_dict(script), log=tmp_path / f"{name}.requests.ndjson")
        started.append(ep.start())
        return ep

    yield start
    for ep in started:
        ep.close()
