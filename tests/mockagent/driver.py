"""Drive a mockagent subprocess: bytes in, decoded lines out, every wait bounded."""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorch.wire.canonical import idempotency_key
from lorch.wire.vocabulary import TERMINAL_EVENTS

SNAP = "snap-0123456789ab"


def command(
    action: str = "implement",
    *,
    task: str = "T-0042",
    inputs: dict[str, Any] | None = None,
    attempt: int = 0,
    corr: str = "corr-T-0042-1",
    snapshot: str = SNAP,
    role: str = "builder",
) -> dict[str, Any]:
    inputs = {"round": 1} if inputs is None else inputs
    return {
        "kind": "command",
        "message_id": f"cmd-{os.urandom(4).hex()}",
        "correlation_id": corr,
        "task_id": task,
        "idempotency_key": idempotency_key(action, task, snapshot, inputs, []),
        "to": {"agent_type": role},
        "action": action,
        "inputs": inputs,
        "expected_outputs": [],
        "version": {"snapshot_id": snapshot},
        "deadline": "2030-01-01T00:00:00Z",
        "retry": {"attempt": attempt, "max_attempts": 3},
        "priority": 5,
    }


class Agent:
    def __init__(
        self, bin_path: str, ws: Path, *args: str, env: dict[str, str] | None = None
    ) -> None:
        self.proc = subprocess.Popen(
            [bin_path, "--workspace", str(ws), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ws,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.buf = b""
        self.lines: list[bytes] = []
        self.sel = selectors.DefaultSelector()
        assert self.proc.stdout is not None
        self.sel.register(self.proc.stdout, selectors.EVENT_READ)

    def send(self, msg: dict[str, Any] | bytes) -> None:
        assert self.proc.stdin is not None
        data = msg if isinstance(msg, bytes) else json.dumps(msg).encode() + b"\n"
        self.proc.stdin.write(data)
        self.proc.stdin.flush()

    def _fill(self, deadline: float) -> bool:
        assert self.proc.stdout is not None
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not self.sel.select(left):
                return False
            chunk = os.read(self.proc.stdout.fileno(), 1 << 20)
            if not chunk:
                return False
            self.buf += chunk
        return True

    def raw_line(self, timeout: float = 10) -> bytes | None:
        deadline = time.monotonic() + timeout
        if not self._fill(deadline):
            return None
        line, _, self.buf = self.buf.partition(b"\n")
        self.lines.append(line)
        return line

    def events(self, timeout: float = 10) -> list[dict[str, Any]]:
        """Events up to and including the next terminal one (heartbeats skipped)."""
        out = []
        deadline = time.monotonic() + timeout
        while True:
            line = self.raw_line(max(0.0, deadline - time.monotonic()))
            assert line is not None, f"no terminal event; got {out}"
            msg = json.loads(line)
            if msg["kind"] != "event":
                continue
            out.append(msg)
            if msg["event"] in TERMINAL:
                return out

    def close(self) -> int:
        """EOF, wait, and release every pipe (idempotent; works on a dead agent)."""
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.close()
        try:
            rc = self.proc.wait(10)
            # Collect what it said on the way out (e.g. the "stopping" heartbeat).
            while self.raw_line(1) is not None:
                pass
            return rc
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.sel.close()
            for stream in (self.proc.stdout, self.proc.stderr):
                if stream is not None:
                    stream.close()


TERMINAL = TERMINAL_EVENTS


def wait_for(condition: Callable[[], bool], timeout: float = 10) -> None:
    """Poll a condition until it holds or the deadline passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def journal(ws: Path, role: str = "builder") -> list[dict[str, Any]]:
    p = ws / ".mockagent" / role / "journal.ndjson"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []
