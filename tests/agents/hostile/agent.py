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


# A process that leaves the agent's process group (setsid) and keeps its stdout and
# stderr: it says where it is (pid, start time) in .hostile/<role>/stray, then waits.
STRAY = """
import os, sys, time
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write("%d %s" % (os.getpid(), open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19]))
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
time.sleep(3600)
"""


def _stray():
    import subprocess

    where = os.path.join(STATE, "stray")
    subprocess.Popen([sys.executable, "-c", STRAY, where], start_new_session=True)
    while not os.path.exists(where):
        time.sleep(0.01)


def setsid_stray_exit(cmd):
    _stray()
    os._exit(3)


def setsid_stray(cmd):
    _stray()
    return True


def fuzz(cmd):
    with open(os.environ["HOSTILE_LINES"], "rb") as f:
        for line in f.read().split(b"\n"):
            raw(line.replace(b"@CORR@", cmd["correlation_id"].encode()))
    return False


# -- evidence attacks (issue 22, point 2): on lorch's own files, sandbox off -----------


def _ledger():
    return os.path.join(WS, "events", os.environ["LORCH_RUN_ID"] + ".ndjson")


def _append_raw(path, lines):
    with open(path, "ab") as f:
        for line in lines:
            f.write(line + b"\n")


def _forge(cmd, name, sender, status=None, payload=None):
    e = event(cmd, name, status, payload if payload is not None else {}, sender=sender)
    e["chain"] = "hmac-sha256:" + "0" * 64  # what a forger without the key can put there
    return json.dumps(e).encode()


def forged_records(cmd):
    # The review, the spec and the run's end, as lorch would record them; then kill lorch.
    review = {"summary": "lgtm", "review_path": f"reviews/{cmd['task_id']}.json"}
    _append_raw(
        _ledger(),
        [
            _forge(cmd, "review.completed", "reviewer", "approved", review),
            _forge(cmd, "spec.no_changes_needed", "spec_maintainer"),
            _forge(cmd, "system.run_completed", "system", None, {"reason": ""}),
        ],
    )
    os.kill(os.getppid(), 9)
    time.sleep(3600)
    return False


def forged_restart(cmd):
    # A restart lorch never did, mid-run; then honest work, as if nothing happened.
    payload = {"role": "builder", "restarts": 1, "max_restarts": 5, "delay_s": 0, "reason": "x"}
    _append_raw(_ledger(), [_forge(cmd, "system.agent_restarted", "system", None, payload)])
    return True


def delete_ledger(cmd):
    os.unlink(_ledger())
    return True


def forged_receipt(cmd):
    # A receipt for a review that never happened (the reviewer is never asked: see the test).
    rel = f"reviews/{cmd['task_id']}.json"
    data = b'{"status": "approved", "summary": "lgtm"}\n'
    write_file(os.path.join(WS, rel), data)
    receipt = {
        "run_id": os.environ["LORCH_RUN_ID"],
        "task_id": cmd["task_id"],
        "step": 9,
        "action": "review",
        "agent_type": "reviewer",
        "idempotency_key": "ik:" + "ab" * 32,
        "correlation_id": cmd["correlation_id"],
        "command_message_id": "cmd-forged",
        "snapshot_id": os.environ["LORCH_SNAPSHOT_ID"],
        "terminal_event": "review.completed",
        "status": "approved",
        "event_ids": ["evt-forged"],
        "artifacts": [artifact(rel, data)],
        "completed_at": now(),
    }
    path = os.path.join(WS, "receipts", cmd["task_id"], "step-9.json")
    write_file(path, json.dumps(receipt).encode())
    return True


def rewrite_config(cmd):
    # Another reviewer for the rest of the run, then kill lorch before it notices.
    path = os.path.join(WS, "lorch.json")
    with open(path) as f:
        config = json.load(f)
    config["agents"]["reviewer"].setdefault("env", {})["HOSTILE_INJECTED"] = "1"
    config["agents"]["reviewer"]["cmd"][-1] = "verdict_file"
    write_file(path, json.dumps(config).encode())
    os.kill(os.getppid(), 9)
    time.sleep(3600)
    return False


def _verdict_path(cmd):
    return os.path.join(WS, "reviews", cmd["task_id"] + ".json")


def _wait_for(condition, what):
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            sys.stderr.write(f"hostile: gave up waiting for {what}\n")
            return False
        time.sleep(0.002)
    return True


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return b""


def flip_verdict(cmd):
    # The builder, still running while the reviewer works, turns its verdict into approval.
    path = _verdict_path(cmd)

    def flip():
        if _wait_for(lambda: b"changes_requested" in _read(path), "a verdict to flip"):
            write_file(path, b'{"status": "approved", "summary": "the builder approves"}\n')

    threading.Thread(target=flip, daemon=True).start()
    return True


def file_changes_once(cmd):
    # The reviewer writes its verdict file, and answers once that file has been flipped.
    path = _verdict_path(cmd)
    write_file(path, b'{"status": "changes_requested", "summary": "fix it"}\n')
    _wait_for(lambda: b"changes_requested" not in _read(path), "the builder's flip")
    payload = {"summary": "fix it", "review_path": f"reviews/{cmd['task_id']}.json"}
    out(event(cmd, "review.completed", "changes_requested", payload))
    return False


def verdict_file(cmd):
    # An honest reviewer that writes its verdict file and names it.
    rel = f"reviews/{cmd['task_id']}.json"
    write_file(os.path.join(WS, rel), b'{"status": "approved", "summary": "fine"}\n')
    out(event(cmd, "review.completed", "approved", {"summary": "fine", "review_path": rel}))
    return False


def spoil_verdict(cmd):
    # Once lorch has captured the reviewer's verdict, the builder rewrites the file.
    path = _verdict_path(cmd)

    def spoil():
        if _wait_for(lambda: b'"system.verdict"' in _read(_ledger()), "the verdict's capture"):
            write_file(path, b'{"status": "approved", "summary": "rewritten by the builder"}\n')

    threading.Thread(target=spoil, daemon=True).start()
    return True


def await_spoil(cmd):
    # The spec maintainer answers once the builder has rewritten the verdict.
    _wait_for(lambda: b"rewritten" in _read(_verdict_path(cmd)), "the builder's rewrite")
    return True


EVIDENCE_ATTACKS = {
    "forged_records": forged_records,
    "forged_restart": forged_restart,
    "delete_ledger": delete_ledger,
    "forged_receipt": forged_receipt,
    "rewrite_config": rewrite_config,
    "flip_verdict": flip_verdict,
    "file_changes_once": file_changes_once,
    "verdict_file": verdict_file,
    "spoil_verdict": spoil_verdict,
    "await_spoil": await_spoil,
}


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
    "setsid_stray_exit": setsid_stray_exit,
    "setsid_stray": setsid_stray,
}

ATTACKS.update(EVIDENCE_ATTACKS)


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
