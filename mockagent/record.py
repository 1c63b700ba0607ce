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
from typing import Any

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
    actions: dict[str, str] = {}  # correlation id -> action
    current: dict[str, list[dict[str, Any]]] = {}
    responses: dict[str, list[dict[str, Any]]] = {}
    lock = threading.Lock()

    def pump_in() -> None:
        assert proc.stdin is not None
        for line in sys.stdin.buffer:
            try:
                cmd = json.loads(line)
                if isinstance(cmd, dict) and cmd.get("kind") == "command":
                    with lock:
                        actions[str(cmd.get("correlation_id"))] = str(cmd.get("action"))
            except ValueError:
                pass
            try:
                proc.stdin.write(line)
                proc.stdin.flush()
            except BrokenPipeError:
                break
        proc.stdin.close()

    threading.Thread(target=pump_in, daemon=True).start()
    for line in proc.stdout:
        sys.stdout.buffer.write(line)
        sys.stdout.buffer.flush()
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if not isinstance(msg, dict) or msg.get("kind") != "event":
            continue
        corr = str(msg.get("correlation_id"))
        with lock:
            action = actions.get(corr)
        if action is None:
            continue
        spec: dict[str, Any] = {"type": msg["event"]}
        for k in ("status", "payload"):
            if k in msg:
                spec[k] = msg[k]
        if msg["event"] != "artifact.produced":
            current.setdefault(corr, []).append(spec)
        else:
            current.setdefault(corr + "#files", []).extend(
                {"path": a["path"], "content": _read(workspace, a["path"])}
                for a in msg.get("artifacts", [])
            )
        if msg["event"] in TERMINAL:
            response: dict[str, Any] = {"events": current.pop(corr, [])}
            files = current.pop(corr + "#files", [])
            if files:
                response["files"] = files
            responses.setdefault(action, []).append(response)
    rc = proc.wait()
    fixture = {"responses": {a: (rs[0] if len(rs) == 1 else rs) for a, rs in responses.items()}}
    out.write_text(json.dumps(_redact(fixture, _secrets()), indent=2) + "\n")
    return rc


def _read(workspace: Path, rel: str) -> str:
    try:
        return (workspace / rel).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""
