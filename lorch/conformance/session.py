"""The conformance session: one agent under test, its scratch workspace, its exchanges.

The checks (:mod:`lorch.conformance.checks`, :mod:`lorch.conformance.idempotency`)
share one session: each sends commands through it and judges what came back.
"""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorch.app.launch import find_executable
from lorch.conformance.driver import AgentUnderTest, Line, Transcript
from lorch.store import snapshot
from lorch.testing.reports import Status
from lorch.wire.canonical import idempotency_key
from lorch.wire.checksum import sha256_file
from lorch.wire.errors import AgentStartError
from lorch.wire.protocol import now_rfc3339
from lorch.wire.vocabulary import TERMINAL_EVENTS

ACTION_FOR = {
    "builder": "implement",
    "reviewer": "review",
    "spec_maintainer": "update_spec",
    "orchestration": "intake",
}
HEARTBEAT_INTERVAL = 0.25


@dataclass(frozen=True)
class ConformanceCheck:
    id: str
    severity: str  # required | recommended
    rule: str
    why: str
    run: Callable[[Session], Verdict]


@dataclass
class Verdict:
    status: Status  # pass | fail | skip
    evidence: str
    lines: list[int] = field(default_factory=list)


@dataclass
class CheckOutcome:
    check: ConformanceCheck
    verdict: Verdict
    expected_failure: bool = False

    @property
    def blocking(self) -> bool:
        return (
            self.verdict.status == "fail"
            and self.check.severity == "required"
            and not self.expected_failure
        )


@dataclass
class Exchange:
    command: dict[str, Any]
    events: list[Line]
    terminal: Line | None
    heartbeats: list[Line]
    problems: list[Line]

    @property
    def terminal_msg(self) -> dict[str, Any]:
        assert self.terminal is not None and self.terminal.message is not None
        return self.terminal.message


def fingerprint(ws: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """inode, mtime_ns, ctime_ns, size and sha256 of every workspace file."""
    out = {}
    for rel in snapshot.iter_files(ws):
        st = (ws / rel).stat()
        out[rel] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, sha256_file(ws / rel)[0])
    return out


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    changed = []
    for rel in sorted(set(a) | set(b)):
        if rel not in a:
            changed.append(f"{rel} created")
        elif rel not in b:
            changed.append(f"{rel} deleted")
        elif a[rel] != b[rel]:
            what = [
                n
                for n, x, y in zip(
                    ("inode", "mtime", "ctime", "size", "sha256"), a[rel], b[rel], strict=True
                )
                if x != y
            ]
            changed.append(f"{rel} ({', '.join(what)} changed)")
    return changed


class Session:
    """One agent, one scratch workspace, one transcript, shared by the checks."""

    def __init__(self, argv: list[str], role: str, workspace: Path | None, timeout: float) -> None:
        self.argv = argv
        self.role = role
        self.timeout = timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workspace is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lorch-conformance-")
            workspace = Path(self._tmp.name)
            (workspace / "README.md").write_text("conformance scratch workspace\n")
        self.workspace = workspace.resolve()
        self.snapshot_id = snapshot.manifest(self.workspace)["snapshot_id"]
        self.transcript = Transcript()
        self.task_id = "T-9001"
        self.round = 0
        env = {
            **os.environ,
            "LORCH_WORKSPACE": str(self.workspace),
            "LORCH_RUN_ID": "run-20000101-000000-00000000",
            "LORCH_ROLE": role,
            "LORCH_AGENT_ID": f"{role}#conformance",
            "LORCH_SNAPSHOT_ID": self.snapshot_id,
            "LORCH_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
        }
        self.agent = AgentUnderTest(argv, self.workspace, env, self.transcript)
        self.cache: dict[str, Any] = {}

    # -- process --------------------------------------------------------------

    def start(self) -> None:
        exe = self.argv[0]
        if os.sep not in exe:
            found = find_executable(exe, self.workspace)
            if found is None:
                raise AgentStartError(f"cannot start {exe!r}: command not found on PATH")
            self.agent.argv = [found, *self.argv[1:]]
        try:
            self.agent.start()
        except OSError as e:
            raise AgentStartError(f"cannot start {exe!r}: {e.strerror}") from None

    def restart(self) -> None:
        self.agent.kill()
        self.start()

    def close(self) -> None:
        self.agent.kill()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- messages -------------------------------------------------------------

    def command(
        self,
        *,
        inputs: dict[str, Any] | None = None,
        action: str | None = None,
        snapshot_id: str | None = None,
    ) -> dict[str, Any]:
        if inputs is None:
            self.round += 1
            inputs = {"round": self.round, "conformance": True}
        action = action or ACTION_FOR[self.role]
        snap = snapshot_id or self.snapshot_id
        return {
            "kind": "command",
            "message_id": f"cmd-{uuid.uuid4().hex[:12]}",
            "correlation_id": f"corr-{self.task_id}-{uuid.uuid4().hex[:6]}",
            "task_id": self.task_id,
            "idempotency_key": idempotency_key(action, self.task_id, snap, inputs, []),
            "to": {"agent_type": self.role},
            "action": action,
            "inputs": inputs,
            "expected_outputs": [],
            "version": {"snapshot_id": snap},
            "deadline": now_rfc3339(),
            "retry": {"attempt": 0, "max_attempts": 3},
            "priority": 5,
        }

    def again(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {
            **cmd,
            "message_id": f"cmd-{uuid.uuid4().hex[:12]}",
            "retry": {**cmd["retry"], "attempt": cmd["retry"]["attempt"] + 1},
        }

    def collect(
        self, corr: str | None, timeout: float | None = None, *, until_terminal: bool = True
    ) -> Exchange:
        """Read until a terminal event for ``corr`` (or any event when corr is None)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        ex = Exchange({}, [], None, [], [])
        while True:
            line = self.agent.next(deadline - time.monotonic())
            if line is None:
                return ex
            if line.problem is not None:
                ex.problems.append(line)
                # A bad line usually stands where the answer should be: wait a
                # little for a good one, not the whole timeout.
                deadline = min(deadline, time.monotonic() + 1.0)
                continue
            msg = line.message or {}
            if msg.get("kind") == "heartbeat":
                ex.heartbeats.append(line)
                continue
            if msg.get("kind") != "event":
                continue
            ex.events.append(line)
            # Any terminal event ends the wait; CORR-001 judges its ids.
            if msg.get("event") in TERMINAL_EVENTS:
                ex.terminal = line
                if until_terminal:
                    return ex

    def exchange(self, cmd: dict[str, Any], timeout: float | None = None) -> Exchange:
        self.agent.send(cmd)
        ex = self.collect(cmd["correlation_id"], timeout)
        ex.command = cmd
        return ex

    def baseline(self) -> Exchange:
        """The first real command, shared by several checks."""
        if "baseline" not in self.cache:
            cmd = self.command()
            ex = self.exchange(cmd)
            # A short grace period to catch a second terminal event.
            extra = self.collect(cmd["correlation_id"], 0.3)
            ex.events += extra.events
            ex.heartbeats += extra.heartbeats
            ex.problems += extra.problems
            self.cache["baseline"] = ex
        result: Exchange = self.cache["baseline"]
        return result


def line_numbers(lines: list[Line]) -> list[int]:
    """The transcript line numbers of ``lines`` (a verdict's evidence)."""
    return [ln.n for ln in lines]


def no_terminal(ex: Exchange, what: str, timeout: float) -> Verdict:
    return Verdict(
        "fail", f"no terminal event for {what} within {timeout:g} s", line_numbers(ex.events[-3:])
    )


def equivalent(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("event", "status", "artifacts")
    return all(a.get(k) == b.get(k) for k in keys)
