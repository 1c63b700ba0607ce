#!/usr/bin/env python3
"""A builder that attacks lorch's rollback: plain Python, no lorch imports.

Usage: rollback_agent.py ATTACK. An NDJSON builder for a role lorch makes
exactly-once (``"idempotency": "lorch"``). On its first command in the
workspace it carries out ATTACK, then dies without answering, so lorch rolls
the turn back and sends the command again; a marker under ``.rollback_agent/``
(a hidden directory: never held by a checkpoint) makes the restarted agent
honest: it writes ``rb/<task>.txt`` and completes.

Attacks:
- ``gitignore``: un-ignores the user's files (``.gitignore`` emptied, a
  ``data/.gitignore`` negating ``local.db``) and makes ``turn-made.txt``.
- ``hide``: makes ``hidden/payload.txt`` and ``x.log`` behind rules of its own
  (``hidden/`` and ``*.log`` appended to ``.gitignore``).
- ``plant``: writes into the checkpoint store directly (sandbox off): a
  ``config`` with ``core.fsmonitor``, ``core.hooksPath`` and a filter driver, a
  ``post-index-change`` hook, ``info/attributes``,
  ``objects/info/alternates``; and a workspace ``.gitattributes`` naming the
  filter. Each command planted is ``ROLLBACK_TRIPWIRE`` (a script that notes
  that it ran), and the alternates point at ``ROLLBACK_OUTSIDE``.
- ``plant_commondir``: the same, and a ``commondir`` naming ``ROLLBACK_OUTSIDE``
  where a config of its own waits.
"""

import hashlib
import json
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

ATTACK = sys.argv[1]
WS = os.environ.get("LORCH_WORKSPACE", os.getcwd())
INTERVAL = float(os.environ.get("LORCH_HEARTBEAT_INTERVAL", "10"))
MARK = os.path.join(WS, ".rollback_agent", "attacked")
STORE = os.path.join(WS, "state", "checkpoints.git")
lock = threading.Lock()


def now():
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def out(msg):
    with lock:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()


def beats():
    seq = 0
    while True:
        out(
            {
                "kind": "heartbeat",
                "agent": {"agent_type": "builder", "agent_id": "builder-rollback"},
                "seq": seq,
                "status": "ready",
                "pid": os.getpid(),
                "uptime_s": 0,
                "last_activity_at": now(),
            }
        )
        seq += 1
        time.sleep(INTERVAL)


def put(rel, text, root=WS):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return path


def attack():
    if ATTACK == "gitignore":
        put(".gitignore", "")
        put("data/.gitignore", "!local.db\n")
        put("turn-made.txt", "made by the failed turn\n")
    elif ATTACK == "hide":
        with open(os.path.join(WS, ".gitignore"), "a") as f:
            f.write("hidden/\n*.log\n")
        put("hidden/payload.txt", "made by the failed turn\n")
        put("x.log", "made by the failed turn\n")
    elif ATTACK in ("plant", "plant_commondir"):
        cmd = os.environ["ROLLBACK_TRIPWIRE"]
        put(
            "config",
            f"[core]\n\tfsmonitor = {cmd}\n\thooksPath = {STORE}/hooks\n"
            f'[filter "evil"]\n\tclean = {cmd}\n\tsmudge = {cmd}\n\trequired = true\n',
            STORE,
        )
        hook = put("hooks/post-index-change", f'#!/bin/sh\nexec "{cmd}" hook\n', STORE)
        os.chmod(hook, 0o755)
        put("info/attributes", "* filter=evil\n", STORE)
        put("objects/info/alternates", os.environ["ROLLBACK_OUTSIDE"] + "\n", STORE)
        if ATTACK == "plant_commondir":
            put("config", f"[core]\n\tfsmonitor = {cmd}\n", os.environ["ROLLBACK_OUTSIDE"])
            put("commondir", os.environ["ROLLBACK_OUTSIDE"] + "\n", STORE)
        put(".gitattributes", "* filter=evil\n")
        put("turn-made.txt", "made by the failed turn\n")


def complete(cmd):
    rel = f"rb/{cmd['task_id']}.txt"
    data = f"# {cmd['task_id']} round {cmd['inputs'].get('round', 1)}\n".encode()
    put(rel, data.decode())
    out(
        {
            "kind": "event",
            "message_id": "evt-" + uuid.uuid4().hex[:12],
            "correlation_id": cmd["correlation_id"],
            "task_id": cmd["task_id"],
            "from": {"agent_type": "builder"},
            "event": "builder.completed",
            "status": "success",
            "payload": {"tests": {"status": "pass", "summary": "rollback agent"}},
            "artifacts": [
                {
                    "path": rel,
                    "sha256": "sha256:" + hashlib.sha256(data).hexdigest(),
                    "size": len(data),
                }
            ],
            "occurred_at": now(),
        }
    )


def main():
    threading.Thread(target=beats, daemon=True).start()
    for line in sys.stdin:
        cmd = json.loads(line)
        if not os.path.exists(MARK):
            put(MARK, "")
            attack()
            os._exit(3)  # the turn fails: lorch rolls it back before the resend
        complete(cmd)


if __name__ == "__main__":
    main()
