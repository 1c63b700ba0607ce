"""The idempotency checks: a key decides a replay, a new key is new work, nothing runs twice."""

from __future__ import annotations

import time
import uuid
from typing import Any

from lorch.conformance.session import (
    Exchange,
    Session,
    Verdict,
    diff,
    equivalent,
    fingerprint,
    line_numbers,
    no_terminal,
)
from lorch.wire.checksum import sha256_file
from lorch.wire.vocabulary import TERMINAL_EVENTS


def _repeat(s: Session, ex: Exchange, what: str) -> Verdict:
    before = fingerprint(s.workspace)
    again = s.exchange(s.again(ex.command))
    if again.terminal is None:
        return no_terminal(again, f"the repeated key ({what})", s.timeout)
    if not equivalent(ex.terminal_msg, again.terminal_msg):
        return Verdict(
            "fail",
            f"{what}: answer differs from the first "
            f"({ex.terminal_msg.get('event')} {ex.terminal_msg.get('status')} vs "
            f"{again.terminal_msg.get('event')} {again.terminal_msg.get('status')})",
            [ex.terminal.n if ex.terminal else 0, again.terminal.n if again.terminal else 0],
        )
    changed = diff(before, fingerprint(s.workspace))
    if changed:
        return Verdict(
            "fail",
            f"{what}: work redone, files touched: {', '.join(changed[:3])}",
            line_numbers(again.events),
        )
    return Verdict("pass", f"{what}: same answer, no file touched")


def idempotent_repeat(s: Session) -> Verdict:
    ex = s.baseline()
    if ex.terminal is None:
        return no_terminal(ex, "the first command", s.timeout)
    return _repeat(s, ex, "same key again")


def in_flight(s: Session) -> Verdict:
    cmd = s.command()
    s.agent.send(cmd)
    s.agent.send(s.again(cmd))
    first = s.collect(cmd["correlation_id"])
    if first.terminal is None:
        return no_terminal(first, "a key sent twice", s.timeout)
    after_first = fingerprint(s.workspace)
    second = s.collect(cmd["correlation_id"])
    if second.terminal is None:
        return no_terminal(second, "the second copy of a key in flight", s.timeout)
    changed = diff(after_first, fingerprint(s.workspace))
    if changed:
        return Verdict(
            "fail",
            f"the key in flight was executed twice: {', '.join(changed[:3])}",
            line_numbers(second.events),
        )
    return Verdict("pass", "two copies of one key in flight: one execution, two answers")


def across_restart(s: Session) -> Verdict:
    cmd = s.command()
    ex = s.exchange(cmd)
    if ex.terminal is None:
        return no_terminal(ex, "a command", s.timeout)
    s.restart()
    return _repeat(s, ex, "same key after kill and restart")


def crash_mid_work(s: Session) -> Verdict:
    cmd = s.command()
    s.agent.send(cmd)
    deadline = time.monotonic() + s.timeout
    working = False
    while time.monotonic() < deadline:
        line = s.agent.next(deadline - time.monotonic())
        if line is None:
            break
        msg = line.message or {}
        if msg.get("kind") == "heartbeat" and msg.get("status") == "busy":
            working = True
            break
        if msg.get("kind") == "event" and msg.get("event") in TERMINAL_EVENTS:
            break
        if msg.get("kind") == "event":
            working = True
            break
    if not working:
        s.restart()
        return Verdict(
            "skip",
            "the agent finished before it could be killed mid-work "
            "(no busy heartbeat or progress event first)",
        )
    s.restart()
    ex = s.exchange(s.again(cmd))
    if ex.terminal is None:
        return no_terminal(ex, "the key re-sent after a crash mid-work", s.timeout)
    v = artifacts_of(s, ex)
    if v is not None:
        return v
    repeat = _repeat(s, ex, "after recovery")
    if repeat.status != "pass":
        return repeat
    return Verdict(
        "pass", "killed mid-work, restarted, re-sent: completed once, files match the answer"
    )


def artifacts_of(s: Session, ex: Exchange) -> Verdict | None:
    for a in ex.terminal_msg.get("artifacts", []):
        full = s.workspace / a["path"]
        if not full.is_file() or sha256_file(full) != (a["sha256"], a["size"]):
            return Verdict(
                "fail",
                f"after recovery, {a['path']} does not match the answer's artifact",
                [ex.terminal.n] if ex.terminal else [],
            )
    return None


def refused(ex: Exchange, what: str) -> Verdict | None:
    """A fresh, well-formed command answered with an error was refused: a failure."""
    if ex.terminal is not None and ex.terminal_msg.get("event") == "error":
        code = (ex.terminal_msg.get("payload") or {}).get("code")
        return Verdict("fail", f"{what} was refused with error {code}", [ex.terminal.n])
    return None


def new_round_executed(s: Session) -> Verdict:
    first = s.exchange(s.command())
    if first.terminal is None:
        return no_terminal(first, "a command", s.timeout)
    second = s.command()
    return _executed(s, first, second, "a new key (new round)")


def new_key_old_correlation(s: Session) -> Verdict:
    first = s.exchange(s.command())
    if first.terminal is None:
        return no_terminal(first, "a command", s.timeout)
    # lorch numbers correlation ids per task (corr-<task>-1 in every run of it):
    # only the key says whether the work was done.
    second = {**s.command(), "correlation_id": first.command["correlation_id"]}
    return _executed(s, first, second, "a new key under an earlier correlation id")


def _executed(s: Session, first: Exchange, cmd: dict[str, Any], what: str) -> Verdict:
    v = refused(first, "a fresh command")
    if v is not None:
        return v
    before = fingerprint(s.workspace)
    second = s.exchange(cmd)
    if second.terminal is None:
        return no_terminal(second, what, s.timeout)
    v = refused(second, what)
    if v is not None:
        return v
    changed = diff(before, fingerprint(s.workspace))
    if changed or second.terminal_msg.get("artifacts") != first.terminal_msg.get("artifacts"):
        return Verdict(
            "pass", f"a new key was executed ({', '.join(changed[:2]) or 'different answer'})"
        )
    if not first.terminal_msg.get("artifacts"):
        return Verdict(
            "skip",
            "the agent produces no files, so real execution cannot be told from a cached answer",
        )
    return Verdict(
        "fail",
        f"{what} was answered without any work: same answer, no file touched "
        "(is the cache keyed by something other than the idempotency key?)",
        line_numbers(second.events),
    )


def same_key_new_correlation(s: Session) -> Verdict:
    ex = s.baseline()
    if ex.terminal is None:
        return no_terminal(ex, "the first command", s.timeout)
    before = fingerprint(s.workspace)
    cmd = {**s.again(ex.command), "correlation_id": f"corr-{s.task_id}-{uuid.uuid4().hex[:6]}"}
    again = s.exchange(cmd)
    what = "the same key under a new correlation id"
    if again.terminal is None:
        return no_terminal(again, what, s.timeout)
    changed = diff(before, fingerprint(s.workspace))
    if changed:
        return Verdict(
            "fail",
            f"{what} was executed again (cache keyed by correlation id?): {', '.join(changed[:3])}",
            line_numbers(again.events),
        )
    if not equivalent(ex.terminal_msg, again.terminal_msg):
        return Verdict(
            "fail",
            f"{what} got another answer ({again.terminal_msg.get('event')} "
            f"{again.terminal_msg.get('status')})",
            [again.terminal.n] if again.terminal else [],
        )
    return Verdict("pass", f"{what}: same answer, no file touched")


def never_refused(s: Session) -> Verdict:
    for i in range(3):
        ex = s.exchange(s.command())
        if ex.terminal is None:
            return no_terminal(ex, f"fresh command {i + 1} of 3", s.timeout)
        v = refused(ex, f"fresh command {i + 1} of 3 (a new key)")
        if v is not None:
            return v
    return Verdict("pass", "3 fresh commands in a row, each answered")


def conflict(s: Session) -> Verdict:
    cmd = s.command()
    first = s.exchange(cmd)
    if first.terminal is None:
        return no_terminal(first, "a command", s.timeout)
    changed = {**s.again(cmd), "inputs": {**cmd["inputs"], "changed": True}}
    ex = s.exchange(changed)
    if ex.terminal is None:
        return no_terminal(ex, "the same key with other inputs", s.timeout)
    if ex.terminal_msg.get("event") == "error":
        return Verdict(
            "pass", f"rejected with error {ex.terminal_msg.get('payload', {}).get('code')}"
        )
    return Verdict(
        "fail",
        f"the same key with different inputs was answered with {ex.terminal_msg.get('event')}",
        [ex.terminal.n] if ex.terminal else [],
    )
