"""``mockagent record --out FIXTURE -- CMD ARGS…``: sit between lorch and a real
agent, pass everything through, and write what the agent answered as a fixture.

Each command's answer becomes one response of its action; repeated actions
become sequences. Values of ``*_TOKEN``, ``*_KEY``, ``*_SECRET`` environment
variables are redacted. Artifacts are recorded as files with their content, so
replaying the fixture writes the same files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO, Any

from mockagent.wire import TERMINAL


def _secrets() -> list[str]:
    out = [
        v
        for k, v in os.environ.items()
        if k.upper().endswith(("_TOKEN", "_KEY", "_SECRET")) and len(v) >= 4
    ]
    return sorted(out, key=len, reverse=True)


def _redact(value: Any, secrets: list[str]) -> Any:
    if isinstance(value, str):
        for s in secrets:
            value = value.replace(s, "***")
        return value
    if isinstance(value, list):
        return [_redact(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: _redact(v, secrets) for k, v in value.items()}
    return value


def record(out: Path, argv: list[str]) -> int:
    workspace = Path(os.environ.get("LORCH_WORKSPACE") or Path.cwd())
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    rec = _Recording(workspace)
    threading.Thread(target=_pump_in, args=(proc.stdin, rec), daemon=True).start()
    for line in proc.stdout:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if isinstance(msg, dict) and msg.get("kind") == "event":
            rec.event(msg)
    rc = proc.wait()
    fixture = {"responses": {a: (rs[0] if len(rs) == 1 else rs) for a, rs in rec.responses.items()}}
    out.write_text(json.dumps(_redact(fixture, _secrets()), indent=2) + "\n")
    return rc


class _Recording:
    """The responses seen so far, per action, built from the agent's events."""

    def __init__(self, workspace: Path) -> None:
        self.workspace = workspace
        self.lock = threading.Lock()
        self.actions: dict[str, str] = {}  # correlation id -> action
        self.current: dict[str, list[dict[str, Any]]] = {}
        self.responses: dict[str, list[dict[str, Any]]] = {}

    def command(self, cmd: dict[str, Any]) -> None:
        with self.lock:
            self.actions[str(cmd.get("correlation_id"))] = str(cmd.get("action"))

    def event(self, msg: dict[str, Any]) -> None:
        corr = str(msg.get("correlation_id"))
        with self.lock:
            action = self.actions.get(corr)
        if action is None:
            return
        spec: dict[str, Any] = {"type": msg["event"]}
        for k in ("status", "payload"):
            if k in msg:
                spec[k] = msg[k]
        if msg["event"] != "artifact.produced":
            self.current.setdefault(corr, []).append(spec)
        else:
            self.current.setdefault(corr + "#files", []).extend(
                {"path": a["path"], "content": _read(self.workspace, a["path"])}
                for a in msg.get("artifacts", [])
            )
        if msg["event"] in TERMINAL:
            response: dict[str, Any] = {"events": self.current.pop(corr, [])}
            files = self.current.pop(corr + "#files", [])
            if files:
                response["files"] = files
            self.responses.setdefault(action, []).append(response)


def _pump_in(stdin: IO[bytes], rec: _Recording) -> None:
    """Our stdin to the agent's, noting each command's action on the way."""
    for line in sys.stdin.buffer:
        try:
            cmd = json.loads(line)
            if isinstance(cmd, dict) and cmd.get("kind") == "command":
                rec.command(cmd)
        except ValueError:
            pass
        try:
            stdin.write(line)
            stdin.flush()
        except BrokenPipeError:
            break
    stdin.close()


def _read(workspace: Path, rel: str) -> str:
    try:
        return (workspace / rel).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
