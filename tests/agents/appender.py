#!/usr/bin/env python3
"""A deliberately non-idempotent agent: plain Python, no lorch imports.

Usage: appender.py ROLE. Every command it receives is executed, never answered
from a cache: it appends one line ``<key> <action> <round>`` to ``effects.log``
in the workspace, then (after a progress event, so a crash can fall in the
middle of its work) appends to the file its role owns, then answers. Sent the
same key twice, it does the work twice: only lorch's checkpoints
(``"idempotency": "lorch"``) can make its effects exactly-once.

``APPENDER_CHANGES=N`` makes the reviewer ask for changes in its first N rounds.
``APPENDER_HANG=1`` makes it hang after its progress event, the first time
only (a marker in ``.appender/``, which lorch does not roll back): a turn that
is cut short for certain when the agent is killed or times out.
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
CHANGES = int(os.environ.get("APPENDER_CHANGES", "0"))
lock = threading.Lock()
seq = [0]


def now():
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def out(msg):
    with lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def beats():
    while True:
        out(
            {
                "kind": "heartbeat",
                "agent": {"agent_type": ROLE, "agent_id": ROLE + "-appender"},
                "seq": seq[0],
                "status": "ready",
                "pid": os.getpid(),
                "uptime_s": 0,
                "last_activity_at": now(),
            }
        )
        seq[0] += 1
        time.sleep(INTERVAL)


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


def append(rel, text):
    path = os.path.join(WS, rel)
    os.makedirs(os.path.dirname(path) or WS, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(text)
    with open(path, "rb") as f:
        data = f.read()
    return {"path": rel, "sha256": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def work(cmd):
    task = cmd["task_id"]
    rnd = cmd["inputs"].get("round", 1)
    append("effects.log", f"{cmd['idempotency_key']} {cmd['action']} {rnd}\n")
    # The marker is made before the progress event: lorch may kill this agent
    # as soon as it has recorded that event, and the next one must not hang.
    marker = os.path.join(WS, ".appender", ROLE + ".hung")
    hang = bool(os.environ.get("APPENDER_HANG")) and not os.path.exists(marker)
    if hang:
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        open(marker, "w").close()
    out(event(cmd, "builder.progress" if ROLE == "builder" else "log", None, {"step": 1}))
    if hang:
        threading.Event().wait()  # until killed
    if ROLE == "builder":
        art = append(f"src/{task}.txt", f"{cmd['action']} round {rnd}\n")
        out(event(cmd, "artifact.produced", None, {}, [art]))
        tests = {"status": "pass", "summary": "appender"}
        return event(cmd, "builder.completed", "success", {"tests": tests}, [art])
    if ROLE == "reviewer":
        verdict = "changes_requested" if rnd <= CHANGES else "approved"
        rel = f"reviews/{task}.json"
        art = append(rel, json.dumps({"round": rnd, "status": verdict}) + "\n")
        return event(cmd, "review.completed", verdict, {"review_path": rel}, [art])
    rel = f"spec_notes/{task}.json"
    art = append(rel, json.dumps({"round": rnd}) + "\n")
    return event(cmd, "spec.updated", None, {"notes_path": rel}, [art])


def main():
    threading.Thread(target=beats, daemon=True).start()
    for line in sys.stdin.buffer:
        try:
            cmd = json.loads(line)
        except ValueError:
            continue
        needed = ("correlation_id", "task_id", "idempotency_key", "action", "inputs")
        if isinstance(cmd, dict) and cmd.get("kind") == "command" and all(k in cmd for k in needed):
            out(work(cmd))


if __name__ == "__main__":
    main()
