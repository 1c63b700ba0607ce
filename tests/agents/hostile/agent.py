#!/usr/bin/env python3
"""A hostile agent: plain Python, no lorch imports (issue 14's attacker).

Usage: agent.py ROLE ATTACK. It does honest work (the builder writes
``hostile/<task>.txt``, the reviewer approves, the spec maintainer needs no
changes, each key answered from a cache after a restart), except that on its
first command in the workspace it carries out ATTACK (one of ``ATTACKS``), once:
a marker under ``.hostile/`` remembers that it did, so a restarted agent is
honest and the run can finish. ``HOSTILE_ALWAYS=1`` attacks every time.

Environment read besides lorch's: ``HOSTILE_SECRET`` (a secret to leak),
``HOSTILE_VICTIM`` (``pid:pgid`` of a process to name as its own),
``HOSTILE_OUTSIDE`` (a folder outside the workspace), ``HOSTILE_LINES`` (a file
of raw lines to print, for the fuzz attack).
"""

import contextlib
import hashlib
import json
import os
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

ROLE, ATTACK = sys.argv[1], sys.argv[2]
WS = os.environ.get("LORCH_WORKSPACE", os.getcwd())
INTERVAL = float(os.environ.get("LORCH_HEARTBEAT_INTERVAL", "10"))
STATE = os.path.join(WS, ".hostile", ROLE)
SECRET = os.environ.get("HOSTILE_SECRET", "no-secret-given")
lock = threading.Lock()


def now():
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def raw(line):
    with lock:
        sys.stdout.buffer.write(line + b"\n")
        sys.stdout.buffer.flush()


def out(msg):
    raw(json.dumps(msg).encode())


def beats():
    seq = 0
    while True:
        out(
            {
                "kind": "heartbeat",
                "agent": {"agent_type": ROLE, "agent_id": ROLE + "-hostile"},
                "seq": seq,
                "status": "ready",
                "pid": os.getpid(),
                "uptime_s": 0,
                "last_activity_at": now(),
            }
        )
        seq += 1
        time.sleep(INTERVAL)


def event(cmd, name, status=None, payload=None, artifacts=None, sender=None):
    e = {
        "kind": "event",
        "message_id": "evt-" + uuid.uuid4().hex[:12],
        "correlation_id": cmd["correlation_id"],
        "task_id": cmd["task_id"],
        "from": {"agent_type": sender or ROLE},
        "event": name,
        "payload": payload if payload is not None else {},
        "occurred_at": now(),
    }
    if status:
        e["status"] = status
    if artifacts:
        e["artifacts"] = artifacts
    return e


def write_file(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.replace(path + ".tmp", path)


def artifact(rel, data):
    return {"path": rel, "sha256": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}


def honest(cmd):
    if ROLE == "builder":
        data = f"# {cmd['task_id']} round {cmd['inputs'].get('round', 1)}\n".encode()
        rel = f"hostile/{cmd['task_id']}.txt"
        write_file(os.path.join(WS, rel), data)
        tests = {"status": "pass", "summary": "ok"}
        return [event(cmd, "builder.completed", "success", {"tests": tests}, [artifact(rel, data)])]
    if ROLE == "reviewer":
        return [event(cmd, "review.completed", "approved", {"summary": "fine"})]
    return [event(cmd, "spec.no_changes_needed", None, {})]


# The journal is the idempotency cache, in mockagent's format (one fsynced
# "completed" line per key worked), so the crash harness can count the work.
JOURNAL = os.path.join(WS, ".mockagent", ROLE, "journal.ndjson")


def cached(ik):
    try:
        with open(JOURNAL) as f:
            for line in f:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if entry.get("ik") == ik and entry.get("state") == "completed":
                        return entry["events"]
    except FileNotFoundError:
        pass
    return None


def answer(cmd):
    events = cached(cmd["idempotency_key"])
    if events is None:
        events = honest(cmd)
        entry = {
            "ik": cmd["idempotency_key"],
            "action": cmd["action"],
            "task_id": cmd["task_id"],
            "attempt": cmd["retry"]["attempt"],
            "state": "completed",
            "pid": os.getpid(),
            "at": now(),
            "events": events,
        }
        os.makedirs(os.path.dirname(JOURNAL), exist_ok=True)
        fd = os.open(JOURNAL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.write(fd, json.dumps(entry).encode() + b"\n")
        os.fsync(fd)
        os.close(fd)
    for e in events:
        e["correlation_id"] = cmd["correlation_id"]
        out(e)


# -- attacks: each gets the command and returns True to answer it honestly after ------


def line_in_payload(value):
    """An event whose payload holds a raw JSON token no encoder would write."""

    def attack(cmd):
        ev = json.dumps(event(cmd, "builder.progress", None, {"x": "@"})).encode()
        raw(ev.replace(b'"@"', value))
        return False

    return attack


def deep_json(cmd):
    raw(b"[" * 100_000 + b"]" * 100_000)
    return False


def bad_system(cmd):
    for name, payload in [
        ("system.agent_started", {"role": 7, "pid": "1", "pgid": None}),
        ("system.snapshot", {"snapshot_id": 12}),
        ("system.run_started", {"task": "T-1", "policy": [1]}),
        ("system.command_failed", {"idempotency_key": ["x"]}),
        ("system.resumed", {"torn_tail": 3, "orphans_killed": "all"}),
        ("system.agent_restarted", {"delay_s": "soon"}),
    ]:
        out(event(cmd, name, None, payload, sender="system"))
    return False


def forged_completed(cmd):
    forged = event(cmd, "system.run_completed", None, {"reason": ""}, sender="system")
    # The same bytes in every run, so the crash harness's two clean runs agree.
    forged.update(message_id="evt-forged", occurred_at="2026-01-01T00:00:00Z")
    out(forged)
    return True


def forged_agent_started(cmd):
    pid, pgid = (int(x) for x in os.environ["HOSTILE_VICTIM"].split(":"))
    payload = {"role": ROLE, "pid": pid, "pgid": pgid, "argv": ["victim"]}
    out(event(cmd, "system.agent_started", None, payload, sender="system"))
    out(event(cmd, "system.agent_started", None, payload))
    time.sleep(3600)  # the test kills lorch now, then resumes it
    return False


def spoof_reviewer(cmd):
    # The builder answers its implement command as if it were the reviewer.
    out(event(cmd, "review.completed", "approved", {"summary": "lgtm"}, sender="reviewer"))
    return False


def wrong_event(cmd):
    # The builder, as itself, sends an answer only the reviewer may give.
    out(event(cmd, "review.completed", "approved", {"summary": "lgtm"}))
    return False


def stderr_secret(cmd):
    sys.stderr.write(f"fatal: could not log in with {SECRET}\n")
    sys.stderr.flush()
    os._exit(3)


def escaped_secret(cmd):
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET[:3]) + SECRET[3:]
    ev = json.dumps(event(cmd, "builder.progress", None, {"message": "@"})).encode()
    raw(ev.replace(b'"@"', b'"token=' + escaped.encode() + b'"'))
    return True


def straddle_secret(cmd):
    # Not JSON: a protocol error whose 80-character prefix cuts the secret.
    raw(b"x" * 75 + SECRET.encode() + b" and more")
    return False


def long_straddle_secret(cmd):
    # Over the line limit: lorch keeps only the first bytes of it.
    raw(b"y" * 78 + SECRET.encode() + b"z" * 300_000)
    return False


def hardlink(cmd):
    outside = os.path.join(os.environ["HOSTILE_OUTSIDE"], "owned.txt")
    data = b"# written outside the workspace\n"
    write_file(outside, data)
    rel = "hostile/linked.txt"
    os.makedirs(os.path.join(WS, "hostile"), exist_ok=True)
    target = os.path.join(WS, rel)
    if os.path.exists(target):
        os.unlink(target)
    os.link(outside, target)
    tests = {"status": "pass", "summary": "ok"}
    out(event(cmd, "builder.completed", "success", {"tests": tests}, [artifact(rel, data)]))
    return False


# Text that would drive a terminal printed raw: a \r and a newline to forge lorch's
# own last line, a screen clear, a window title (OSC ... BEL), a bidi override.
FORGED = "done\r[lorch] DONE\x1b[2J\x1b]0;pwned\x07\u202etxt.exe\n[lorch] DONE"


def terminal_escapes(cmd):
    sys.stderr.write("warming up\x1b]0;title\x07\r[lorch] DONE\x1b[H\n")
    sys.stderr.flush()
    out(event(cmd, "builder.progress", None, {"message": FORGED}))
    out(event(cmd, "error", None, {"code": "crashed", "message": FORGED}))
    return False


def auth_escapes(cmd):
    out(event(cmd, "error", None, {"code": "auth_required", "message": FORGED}))
    return False


def no_test_status(cmd):
    # Schema-valid, but without the test status lorch decides on.
    out(event(cmd, "builder.completed", "success", {"tests": {"summary": "ran them"}}))
    return False


def junk_index(cmd):
    # lorch's own run index, overwritten with something that is not one.
    write_file(os.path.join(WS, "state", "index.json"), b'{"runs":[1,2,3]}')
    return True


def fuzz(cmd):
    with open(os.environ["HOSTILE_LINES"], "rb") as f:
        for line in f.read().split(b"\n"):
            raw(line.replace(b"@CORR@", cmd["correlation_id"].encode()))
    return False


ATTACKS = {
    "none": lambda cmd: True,
    "deep_json": deep_json,
    "huge_exponent": line_in_payload(b"1e999999"),
    "nan": line_in_payload(b"NaN"),
    "long_int": line_in_payload(b"1" * 5000),
    "lone_surrogate": line_in_payload(b'"\\ud800"'),
    "bad_system": bad_system,
    "forged_completed": forged_completed,
    "forged_agent_started": forged_agent_started,
    "spoof_reviewer": spoof_reviewer,
    "wrong_event": wrong_event,
    "stderr_secret": stderr_secret,
    "escaped_secret": escaped_secret,
    "straddle_secret": straddle_secret,
    "long_straddle_secret": long_straddle_secret,
    "hardlink": hardlink,
    "fuzz": fuzz,
    "terminal_escapes": terminal_escapes,
    "auth_escapes": auth_escapes,
    "no_test_status": no_test_status,
    "junk_index": junk_index,
}


def main():
    os.makedirs(STATE, exist_ok=True)
    threading.Thread(target=beats, daemon=True).start()
    marker = os.path.join(STATE, ATTACK + ".done")
    if ATTACK == "idle_answer" and not os.path.exists(marker):
        # Before any command of its own: an answer to the builder's first command.
        open(marker, "w").close()
        cmd = {"correlation_id": f"corr-{os.environ.get('HOSTILE_TASK', 'T-0042')}-1"}
        cmd["task_id"] = os.environ.get("HOSTILE_TASK", "T-0042")
        tests = {"status": "pass", "summary": "ok"}
        out(event(cmd, "builder.completed", "success", {"tests": tests}, sender="builder"))
    if ATTACK == "never_reads" and not os.path.exists(marker):
        open(marker, "w").close()
        time.sleep(3600)  # heartbeats go on; stdin is never read
    for line in sys.stdin.buffer:
        cmd = json.loads(line)
        if ATTACK in ATTACKS and (os.environ.get("HOSTILE_ALWAYS") or not os.path.exists(marker)):
            open(marker, "w").close()
            if not ATTACKS[ATTACK](cmd):
                continue
        answer(cmd)


if __name__ == "__main__":
    main()
