"""Drive lorch's ACP port against the scripted ACP agent (tests/agents/acp_agent.py)."""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from lorch.agents.acp.host import AcpSettings
from lorch.agents.acp.port import AcpPort
from lorch.agents.transport import Inbox, Incoming, Launch, SendContext
from lorch.app.launch import base_env
from lorch.store.checkpoint import Checkpoints
from lorch.wire import protocol, vocabulary
from lorch.wire.redact import Redactor
from tests.orchestrator.conftest import lorch  # noqa: F401  (the e2e runner fixture)

AGENT = Path(__file__).resolve().parent.parent / "agents" / "acp_agent.py"


def command(action: str = "implement", task_id: str = "T-1", **inputs: Any) -> dict[str, Any]:
    role = {
        "implement": "builder",
        "implement_changes": "builder",
        "review": "reviewer",
        "update_spec": "spec_maintainer",
    }[action]
    return {
        "kind": "command",
        "message_id": protocol.new_message_id("cmd"),
        "correlation_id": f"corr-{task_id}-1",
        "task_id": task_id,
        "idempotency_key": "ik:" + "a" * 64,
        "to": {"agent_type": role},
        "action": action,
        "inputs": {"round": 1, **inputs},
        "expected_outputs": [],
        "version": {"snapshot_id": "snap-0123456789ab"},
        "deadline": "2030-01-01T00:00:00Z",
        "retry": {"attempt": 0, "max_attempts": 3},
        "priority": 5,
    }


@dataclass
class Harness:
    tmp: Path
    workspace: Path
    inbox: Inbox = field(default_factory=Inbox)
    ports: list[AcpPort] = field(default_factory=list)

    def script(self, turns: list[dict[str, Any]], **top: Any) -> Path:
        path = self.tmp / f"script-{len(self.ports)}.json"
        path.write_text(json.dumps({"turns": turns, **top}))
        return path

    def port(
        self,
        script: Path,
        role: str = "builder",
        *,
        env: dict[str, str] | None = None,
        pass_env: tuple[str, ...] = (),
        secrets: list[str] | None = None,
        **settings: Any,
    ) -> AcpPort:
        ck = Checkpoints(self.workspace, self.tmp / "ckpt.git", durable=False)
        launch = Launch(
            role=role,
            argv=[sys.executable, str(AGENT), str(script)],
            cwd=self.workspace,
            env={
                **base_env(pass_env),
                "ACP_AGENT_STATE": str(self.tmp / "agent-state"),
                **(env or {}),
            },
            log_path=self.workspace / "logs" / role / "run-1.ndjson",
            generation=len(self.ports) + 1,
            redactor=Redactor(secrets or []),
        )
        opts = {
            "task": {"id": "T-1", "goal": "greet"},
            "take": ck.take,
            "changed": ck.changed,
            # The scripted agent's "via": "fs" steps need lorch's file service.
            "fs": True,
            **settings,
        }
        p = AcpPort(launch, self.inbox, AcpSettings(workspace=self.workspace, **opts))
        self.ports.append(p)
        p.start()
        return p

    def turn(
        self, port: AcpPort, cmd: dict[str, Any], timeout: float = 30.0
    ) -> tuple[list[Incoming], Incoming]:
        """Send ``cmd``; every item up to the terminal event (or exit), and that one."""
        assert port.send(cmd, protocol.encode(cmd), SendContext())
        return self.until_end(timeout)

    def until_end(self, timeout: float = 30.0) -> tuple[list[Incoming], Incoming]:
        seen: list[Incoming] = []
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            item = self.inbox.get(0.2)
            if item is None:
                continue
            if item.kind == "exit" or (
                item.kind == "event"
                and item.message is not None
                and item.message["event"] in vocabulary.TERMINAL_EVENTS
            ):
                return seen, item
            seen.append(item)
        raise AssertionError(f"no terminal item in {timeout} s; saw {seen}")

    def journal(self) -> list[dict[str, Any]]:
        path = self.tmp / "agent-state" / "journal.ndjson"
        if not path.exists():
            return []
        return [json.loads(x) for x in path.read_text().splitlines()]


def lines(items: list[Incoming]) -> list[str]:
    return [
        str(i.message["payload"]["message"])
        for i in items
        if i.kind == "event" and i.message and i.message["event"] == "log"
    ]


def decisions(items: list[Incoming]) -> list[dict[str, Any]]:
    """The permission decisions of a turn (the payloads of its ``system.permission`` records)."""
    return [
        dict(i.message["payload"])
        for i in items
        if i.kind == "permission" and i.message is not None
    ]


def shown(decision: dict[str, Any]) -> str:
    """A decision in one line, as the transcript shows it."""
    where = f" ({', '.join(decision['paths'])})" if decision["paths"] else ""
    verdict = "allowed" if decision["allowed"] else "refused"
    return (
        f"permission {decision['kind']} {decision['title']!r}{where}: {verdict} "
        f"({decision['rule']}: {decision['reason']})"
    )


@pytest.fixture
def acp(tmp_path: Path) -> Iterator[Harness]:
    ws = tmp_path / "ws"
    ws.mkdir()
    h = Harness(tmp_path, ws)
    yield h
    for p in h.ports:
        p.kill()
    h.inbox.close()


@pytest.fixture(autouse=True)
def _no_stray_acp_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCRIPTED_KEY", raising=False)
    os.environ.pop("ACP_AGENT_SCRIPT", None)
