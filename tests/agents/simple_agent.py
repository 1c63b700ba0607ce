#!/usr/bin/env python3
"""A tiny independent agent: plain Python, no lorch imports.

Usage: simple_agent.py ROLE. Speaks the protocol from docs/protocol.md:
heartbeats on a thread, one answer per command, an idempotency cache on disk
(``.simple_agent/<role>/<key>.json``) so a repeated key is answered without
redoing work. ``SIMPLE_AGENT_GARBAGE=1`` makes it print a bad line first.
"""

import hashlib
import json
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

ROLE = sys.argv[1]
WS = os.environ.get("LORCH_WORKSPACE", os.getcwd())
INTERVAL = float(os.environ.get("LORCH_HEARTBEAT_INTERVAL", "10"))
CACHE = os.path.join(WS, ".simple_agent", ROLE)
lock = threading.Lock()
seq = [0]
status = ["ready"]


def now():
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def out(msg):
    with lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def beat():
    out(
        {
            "kind": "heartbeat",
            "agent": {"agent_type": ROLE, "agent_id": ROLE + "-simple"},
            "seq": seq[0],
            "status": status[0],
            "pid": os.getpid(),
            "uptime_s": 0,
            "last_activity_at": now(),
        }
    )
    seq[0] += 1


def beats():
    while True:
        time.sleep(INTERVAL)
        beat()


def event(cmd, name, status=None, payload=None, artifacts=None):
    e = {
        "kind": "event",
        "message_id": "evt-" + uuid.uuid4().hex[:12],
        "correlation_id": cmd["correlation_id"],
        "task_id": cmd["task_id"],
        "from": {"agent_type": ROLE},
        "event": name,
        "payload": payload or {},
        "occurred_at": now(),
    }
    if status:
        e["status"] = status
    if artifacts:
        e["artifacts"] = artifacts
    return e


def work(cmd):
    task = cmd["task_id"]
    rnd = cmd["inputs"].get("round", 1)
    if ROLE == "builder":
        data = f"# {task} round {rnd}\n".encode()
        rel = f"simple/{task}.txt"
        path = os.path.join(WS, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.replace(path + ".tmp", path)
        art = {
            "path": rel,
            "sha256": "sha256:" + hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
        return [
            event(
                cmd,
                "builder.completed",
                "success",
                {"tests": {"status": "pass", "summary": "simple"}},
                [art],
            )
        ]
    if ROLE == "reviewer":
        return [event(cmd, "review.completed", "approved", {"summary": "fine"})]
    return [event(cmd, "spec.no_changes_needed", None, {})]


def error(cmd, code, message):
    base = {"correlation_id": "unknown", "task_id": "unknown"}
    if isinstance(cmd, dict):
        base.update(
            {k: cmd[k] for k in ("correlation_id", "task_id") if isinstance(cmd.get(k), str)}
        )
    return event(base, "error", "failed", {"code": code, "message": message})


def answer(line):
    """Events for one input line; never raises on bad input."""
    if len(line) > 262144:
        return [error(None, "line_too_long", f"{len(line)} bytes")]
    try:
        cmd = json.loads(line)
    except ValueError:
        return [error(None, "bad_json", "not JSON")]
    if not isinstance(cmd, dict) or cmd.get("kind") != "command" or "idempotency_key" not in cmd:
        return [error(cmd, "schema_violation", "not a command")]
    if cmd.get("action") not in (
        "implement",
        "implement_changes",
        "review",
        "update_spec",
        "intake",
        "task_discovery",
    ):
        return [error(cmd, "unknown_action", str(cmd.get("action")))]
    snap = os.environ.get("LORCH_SNAPSHOT_ID")
    if snap and cmd.get("version", {}).get("snapshot_id") != snap:
        return [error(cmd, "version_mismatch", "other snapshot")]
    digest = hashlib.sha256(
        json.dumps([cmd["action"], cmd["inputs"]], sort_keys=True).encode()
    ).hexdigest()
    key = os.path.join(CACHE, cmd["idempotency_key"][3:] + ".json")
    if os.path.exists(key):
        with open(key) as f:
            saved = json.load(f)
        if saved["digest"] != digest:
            return [error(cmd, "idempotency_conflict", "key reused with other inputs")]
        events = saved["events"]
        for e in events:
            e["correlation_id"] = cmd["correlation_id"]
        return events
    status[0] = "busy"
    events = work(cmd)
    with open(key + ".tmp", "w") as f:
        json.dump({"digest": digest, "events": events}, f)
    os.replace(key + ".tmp", key)
    status[0] = "ready"
    return events


def main():
    os.makedirs(CACHE, exist_ok=True)
    beat()
    threading.Thread(target=beats, daemon=True).start()
    if os.environ.get("SIMPLE_AGENT_GARBAGE") and ROLE == "builder":
        marker = os.path.join(CACHE, "garbage-done")
        if not os.path.exists(marker):
            open(marker, "w").close()
            sys.stdout.write("not json at all\n")
            sys.stdout.flush()
    for line in sys.stdin.buffer:
        for e in answer(line.rstrip(b"\n")):
            e["message_id"] = "evt-" + uuid.uuid4().hex[:12]
            out(e)


if __name__ == "__main__":
    main()
