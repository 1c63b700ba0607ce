"""The conformance battery: each check drives the agent and gives a verdict with evidence.

A check that the run could not exercise is ``skip`` (not applicable), never a
failure blamed on the agent.
"""

from __future__ import annotations

import itertools
import json
import os
import time

from lorch.conformance.driver import Line
from lorch.conformance.idempotency import (
    across_restart,
    conflict,
    crash_mid_work,
    idempotent_repeat,
    in_flight,
    never_refused,
    new_key_old_correlation,
    new_round_executed,
    same_key_new_correlation,
)
from lorch.conformance.session import (
    HEARTBEAT_INTERVAL,
    ConformanceCheck,
    Session,
    Verdict,
    line_numbers,
    no_terminal,
)
from lorch.store.paths import safe_relpath
from lorch.wire.checksum import sha256_file
from lorch.wire.vocabulary import TERMINAL_EVENTS

# The heartbeat statuses that may follow each status.
STATUS_NEXT = {
    "starting": {"starting", "ready", "busy", "stopping", "backoff"},
    "ready": {"ready", "busy", "stopping", "backoff"},
    "busy": {"busy", "ready", "stopping", "backoff"},
    "backoff": {"backoff", "ready", "busy", "stopping", "starting"},
    "stopping": {"stopping"},
}

# -- the checks ---------------------------------------------------------------------


def proto_lines(s: Session) -> Verdict:
    s.baseline()
    bad = [ln for ln in s.transcript.lines if ln.direction == "out" and ln.problem is not None]
    if bad:
        return Verdict("fail", f"line {bad[0].n}: {bad[0].problem}", line_numbers(bad))
    outs = sum(ln.direction == "out" for ln in s.transcript.lines)
    return Verdict("pass", f"{outs} lines, all valid NDJSON within 256 KiB and schema-valid")


def heartbeats(s: Session) -> Verdict:
    ex = s.baseline()
    more = s.collect("none", HEARTBEAT_INTERVAL * 4, until_terminal=False)
    beats = [
        ln
        for ln in s.transcript.lines
        if ln.direction == "out"
        and (ln.message or {}).get("kind") == "heartbeat"
        and ln.generation == s.agent.generation
    ]
    beats += []
    del more, ex
    if len(beats) < 2:
        return Verdict(
            "fail",
            f"{len(beats)} heartbeat(s) over {HEARTBEAT_INTERVAL * 4:g} s "
            f"with LORCH_HEARTBEAT_INTERVAL={HEARTBEAT_INTERVAL}",
            line_numbers(beats),
        )
    seqs = [ln.message["seq"] for ln in beats if ln.message]
    if any(b <= a for a, b in itertools.pairwise(seqs)):
        return Verdict("fail", f"heartbeat seq not increasing: {seqs[:10]}", line_numbers(beats))
    pids = {ln.message["pid"] for ln in beats if ln.message}
    if pids != {s.agent.pid}:
        return Verdict(
            "fail",
            f"heartbeat pid {sorted(pids)} is not the agent's pid {s.agent.pid}",
            line_numbers(beats),
        )
    statuses = [ln.message["status"] for ln in beats if ln.message]
    for a, b in itertools.pairwise(statuses):
        if b not in STATUS_NEXT[a]:
            return Verdict("fail", f"heartbeat status went {a} → {b}", line_numbers(beats))
    now = time.monotonic() - s.transcript.started
    gaps = [b.at - a.at for a, b in itertools.pairwise(beats)] + [now - beats[-1].at]
    worst = max(gaps)
    if worst > HEARTBEAT_INTERVAL * 3:
        return Verdict(
            "fail",
            f"a gap of {worst:.2f} s between heartbeats "
            f"(interval {HEARTBEAT_INTERVAL} s, 3 missed = unhealthy)",
            line_numbers(beats),
        )
    return Verdict(
        "pass",
        f"{len(beats)} heartbeats, seq increasing, pid {s.agent.pid}, largest gap {worst:.2f} s",
    )


def correlation(s: Session) -> Verdict:
    ex = s.baseline()
    if ex.terminal is None:
        return no_terminal(ex, "the first command", s.timeout)
    cmd = ex.command
    wrong = [
        ln
        for ln in ex.events
        if (ln.message or {}).get("task_id") != cmd["task_id"]
        or (ln.message or {}).get("correlation_id") != cmd["correlation_id"]
    ]
    if wrong:
        m = wrong[0].message or {}
        return Verdict(
            "fail",
            f"event {m.get('event')} has task {m.get('task_id')} / correlation "
            f"{m.get('correlation_id')}, expected {cmd['task_id']} / {cmd['correlation_id']}",
            line_numbers(wrong),
        )
    return Verdict("pass", f"{len(ex.events)} events echo task_id and correlation_id")


def one_terminal(s: Session) -> Verdict:
    ex = s.baseline()
    terms = [ln for ln in ex.events if (ln.message or {}).get("event") in TERMINAL_EVENTS]
    if len(terms) != 1:
        return Verdict("fail", f"{len(terms)} terminal events for one command", line_numbers(terms))
    return Verdict(
        "pass",
        f"exactly one terminal event ({terms[0].message['event'] if terms[0].message else '?'})",
    )


def artifacts(s: Session) -> Verdict:
    ex = s.baseline()
    arts = [(ln, a) for ln in ex.events for a in (ln.message or {}).get("artifacts", [])]
    if not arts:
        return Verdict("skip", "the agent reported no artifacts for this command")
    for ln, a in arts:
        try:
            full = safe_relpath(s.workspace, a["path"])
        except Exception as e:
            return Verdict("fail", str(e), [ln.n])
        if not full.is_file():
            return Verdict("fail", f"artifact {a['path']} does not exist", [ln.n])
        sha, size = sha256_file(full)
        if (sha, size) != (a["sha256"], a["size"]):
            return Verdict(
                "fail",
                f"artifact {a['path']}: claimed {a['sha256']} ({a['size']} B), "
                f"file is {sha} ({size} B)",
                [ln.n],
            )
    return Verdict("pass", f"{len(arts)} artifact claims match the files")


def _open_commands(s: Session) -> tuple[list[Line], list[Line]]:
    """Walk the whole transcript: (events that name no open command, surplus terminals).

    A command is open from its delivery (per agent process) until one terminal
    event answers it; each delivery gets one answer. An event whose correlation
    id was never sent answers a line that was not a command (INPUT-* judge it).
    """
    open_: dict[tuple[int, str], int] = {}
    sent: set[str] = set()
    stray: list[Line] = []
    extra: list[Line] = []
    for ln in s.transcript.lines:
        if ln.direction == "in":
            try:
                m = json.loads(ln.raw)
            except ValueError:
                continue
            if isinstance(m, dict) and isinstance(m.get("correlation_id"), str):
                key = (ln.generation, m["correlation_id"])
                open_[key] = open_.get(key, 0) + 1
                sent.add(m["correlation_id"])
            continue
        msg = ln.message or {}
        corr = msg.get("correlation_id")
        if ln.direction != "out" or msg.get("kind") != "event" or corr not in sent:
            continue
        key = (ln.generation, str(corr))
        if msg.get("event") in TERMINAL_EVENTS:
            if open_.get(key, 0) > 0:
                open_[key] -= 1
            else:
                extra.append(ln)
        elif open_.get(key, 0) == 0:
            stray.append(ln)
    return stray, extra


def every_correlation(s: Session) -> Verdict:
    for _ in range(2):  # at least two commands, so an id left over from the last one shows
        ex = s.exchange(s.command())
        if ex.terminal is None:
            return no_terminal(ex, "a command", s.timeout)
    s.collect("none", 0.3, until_terminal=False)
    stray, _ = _open_commands(s)
    if stray:
        m = stray[0].message or {}
        return Verdict(
            "fail",
            f"event {m.get('event')} carries correlation {m.get('correlation_id')}, "
            "which is not a command in flight (a previous command's id?)",
            line_numbers(stray),
        )
    events = sum(
        ln.direction == "out" and (ln.message or {}).get("kind") == "event"
        for ln in s.transcript.lines
    )
    return Verdict("pass", f"all {events} events so far carry their own command's correlation id")


def no_second_terminal(s: Session) -> Verdict:
    ex = s.baseline()
    if ex.terminal is not None:
        s.exchange(s.again(ex.command))  # a replay must be answered once too
    s.collect("none", 0.3, until_terminal=False)
    _, extra = _open_commands(s)
    if extra:
        m = extra[0].message or {}
        return Verdict(
            "fail",
            f"a second terminal event ({m.get('event')}) for {m.get('correlation_id')}, "
            "which was already answered",
            line_numbers(extra),
        )
    return Verdict("pass", "every delivery of every command got exactly one terminal event")


def version_mismatch(s: Session) -> Verdict:
    cmd = s.command(snapshot_id="snap-000000000000")
    ex = s.exchange(cmd)
    if ex.terminal is None:
        return no_terminal(ex, "a command with another snapshot", s.timeout)
    msg = ex.terminal_msg
    code = (msg.get("payload") or {}).get("code")
    if msg.get("event") == "error" and code == "version_mismatch":
        return Verdict("pass", "answered error version_mismatch")
    return Verdict(
        "fail",
        f"a command for snapshot-000000000000 (workspace {s.snapshot_id}) "
        f"got {msg.get('event')} {code or ''}".strip(),
        [ex.terminal.n] if ex.terminal else [],
    )


def _bad_input(s: Session, raw: bytes, what: str) -> Verdict:
    s.agent.send(raw)
    ex = s.collect(None, s.timeout)
    if ex.terminal is None or ex.terminal_msg.get("event") != "error":
        got = ex.terminal_msg.get("event") if ex.terminal is not None else "nothing"
        return Verdict(
            "fail", f"{what}: expected an error event, got {got}", line_numbers(ex.events[-2:])
        )
    alive = s.exchange(s.command())
    if alive.terminal is None:
        return Verdict(
            "fail", f"{what}: the agent stopped serving afterwards", line_numbers(alive.events)
        )
    return Verdict(
        "pass",
        f"{what}: error {ex.terminal_msg.get('payload', {}).get('code')}, and it kept serving",
    )


def malformed(s: Session) -> Verdict:
    return _bad_input(s, b"{this is not json\n", "malformed line")


def oversized(s: Session) -> Verdict:
    return _bad_input(
        s, b'{"kind":"command","pad":"' + b"x" * 300_000 + b'"}\n', "300,000-byte line"
    )


def unknown_action(s: Session) -> Verdict:
    cmd = s.command()
    cmd["action"] = "juggle"
    return _bad_input(s, (__import__("json").dumps(cmd) + "\n").encode(), "unknown action")


def _ends(s: Session, how: str) -> Verdict:
    s.restart()
    s.collect(None, 0.2, until_terminal=False)
    if how == "eof":
        s.agent.close_stdin()
    else:
        os.kill(s.agent.pid, 15)
    rc = s.agent.wait(5)
    if rc is None:
        s.restart()
        return Verdict("fail", f"still running 5 s after {how.upper()}")
    s.start()
    return Verdict("pass", f"exited with code {rc} after {how.upper()}")


def eof(s: Session) -> Verdict:
    return _ends(s, "eof")


def sigterm(s: Session) -> Verdict:
    return _ends(s, "sigterm")


CHECKS: list[ConformanceCheck] = [
    ConformanceCheck(
        "PROTO-001",
        "required",
        "DESIGN §3",
        "lorch records every line; one bad line is a protocol error and a retry",
        proto_lines,
    ),
    ConformanceCheck(
        "HB-001",
        "required",
        "DESIGN §6",
        "without heartbeats lorch declares the agent unhealthy and kills it",
        heartbeats,
    ),
    ConformanceCheck(
        "CORR-001",
        "required",
        "DESIGN §3",
        "lorch matches events to commands by task and correlation id",
        correlation,
    ),
    ConformanceCheck(
        "TERM-001",
        "required",
        "DESIGN §3",
        "a command is done at its one terminal event; two answers make the run ambiguous",
        one_terminal,
    ),
    ConformanceCheck(
        "ART-001",
        "required",
        "DESIGN §5.8",
        "lorch hashes every artifact; a wrong claim fails the command",
        artifacts,
    ),
    ConformanceCheck(
        "IDEMP-001",
        "required",
        "DESIGN §5.3-5.4",
        "after a crash lorch re-sends the pending command with the same key",
        idempotent_repeat,
    ),
    ConformanceCheck(
        "IDEMP-002",
        "required",
        "DESIGN §5.6",
        "two deliveries of one key must never run the work twice at once",
        in_flight,
    ),
    ConformanceCheck(
        "IDEMP-003",
        "required",
        "DESIGN §5.3",
        "resume restarts agents and re-sends keys they already answered",
        across_restart,
    ),
    ConformanceCheck(
        "IDEMP-004",
        "required",
        "DESIGN §5.3",
        "an agent killed mid-work must finish the work exactly once on re-send",
        crash_mid_work,
    ),
    ConformanceCheck(
        "IDEMP-005",
        "required",
        "DESIGN §5.4",
        "a new round has a new key and must really be done (negative control)",
        new_round_executed,
    ),
    ConformanceCheck(
        "IDEMP-006",
        "recommended",
        "DESIGN §5.4",
        "a key reused with other inputs is a bug worth refusing loudly",
        conflict,
    ),
    ConformanceCheck(
        "VER-001",
        "required",
        "DESIGN §3",
        "work against the wrong workspace version must be refused",
        version_mismatch,
    ),
    ConformanceCheck(
        "IDEMP-007",
        "required",
        "DESIGN §5.3-5.4",
        "lorch reuses correlation ids across runs; only the key may decide a replay",
        same_key_new_correlation,
    ),
    ConformanceCheck(
        "IDEMP-008",
        "required",
        "DESIGN §5.4",
        "a new key under a reused correlation id is new work (negative control)",
        new_key_old_correlation,
    ),
    ConformanceCheck(
        "IDEMP-009",
        "required",
        "DESIGN §5.4",
        "refusing a legitimate new command stalls the run",
        never_refused,
    ),
    ConformanceCheck(
        "INPUT-001", "required", "DESIGN §5.10", "a bad line must not kill the agent", malformed
    ),
    ConformanceCheck(
        "INPUT-002",
        "required",
        "DESIGN §3",
        "lines over 256 KiB are refused, not buffered without end",
        oversized,
    ),
    ConformanceCheck(
        "INPUT-003",
        "required",
        "DESIGN §3",
        "an unknown action gets an error event, not silence",
        unknown_action,
    ),
    ConformanceCheck(
        "CORR-002",
        "required",
        "DESIGN §3",
        "lorch attributes every event by correlation id, progress included",
        every_correlation,
    ),
    ConformanceCheck(
        "TERM-002",
        "required",
        "DESIGN §3",
        "a second terminal event for a command makes the run ambiguous",
        no_second_terminal,
    ),
    ConformanceCheck("LIFE-001", "required", "DESIGN §6", "lorch stops agents with EOF first", eof),
    ConformanceCheck(
        "LIFE-002",
        "required",
        "DESIGN §6",
        "lorch escalates to SIGTERM; a hung stop delays every resume",
        sigterm,
    ),
]
