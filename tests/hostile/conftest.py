"""Workspaces whose agents are hostile (tests/agents/hostile/agent.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.orchestrator.conftest import lorch, records, run_ids, scenario, terminal_events

__all__ = ["lorch", "records", "run_ids", "scenario", "terminal_events"]

AGENT = str(Path(__file__).parent.parent / "agents" / "hostile" / "agent.py")
ROLES = ("builder", "reviewer", "spec_maintainer")
SECRET = "s3cr3t-Hostile-Value-8d1f2a"
ENV_SECRET = "env0nly-Agent-Secret-77c3e9"

Workspace = Callable[..., Path]


@pytest.fixture
def hostile_ws(tmp_path: Path) -> Workspace:
    """A workspace whose roles run the hostile agent with the given attacks.

    The builder's ``agents.builder.env`` holds a secret of its own
    (``HOSTILE_API_TOKEN``), which the agent is told to leak.
    """

    def make(
        attacks: dict[str, str],
        *,
        task: dict[str, Any] | None = None,
        leak: str = "role-env",
        name: str = "ws",
        **extra: Any,
    ) -> Path:
        ws = tmp_path / name
        ws.mkdir()
        agents: dict[str, Any] = {}
        # leak="role-env": the agent leaks a secret only its agents.<role>.env
        # holds; otherwise it leaks HOSTILE_SECRET from lorch's own environment.
        env = {"HOSTILE_API_TOKEN": ENV_SECRET}
        if leak == "role-env":
            env["HOSTILE_SECRET"] = ENV_SECRET
        for role in ROLES:
            agents[role] = {
                "cmd": [sys.executable, AGENT, role, attacks.get(role, "none")],
                "heartbeat_interval_s": 0.5,
                "env": dict(env),
            }
            if leak != "role-env":
                # A secret of lorch's own environment reaches an agent only by name.
                agents[role]["pass_env"] = ["HOSTILE_SECRET", "DEPLOY_PASSWORD"]
            agents[role].update(extra.pop(role, {}))
        cfg = {
            "version": "1",
            "task": task or {"id": "T-0042", "goal": "say hello"},
            "agents": agents,
            "policy": {"backoff": {"initial_s": 0.01, "factor": 2, "max_s": 0.05}},
            **extra,
        }
        (ws / "lorch.json").write_text(json.dumps(cfg))
        return ws

    return make


def protocol_errors(ws: Path) -> list[dict[str, Any]]:
    return [r["payload"] for r in records(ws) if r.get("event") == "system.protocol_error"]


def answered_by(ws: Path) -> list[tuple[str, str]]:
    """(role, terminal event) of every accepted-looking agent answer, in order."""
    from lorch.wire.vocabulary import TERMINAL_EVENTS

    return [
        (r["from"]["agent_type"], r["event"])
        for r in records(ws)
        if r.get("event") in TERMINAL_EVENTS and r["from"]["agent_type"] != "system"
    ]


def assert_clean_exit(r: subprocess.CompletedProcess[str], code: int = 0) -> None:
    assert r.returncode == code, (r.stdout[-2000:], r.stderr[-2000:])
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr
