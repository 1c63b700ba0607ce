"""The conformance battery: each check drives the agent and gives a verdict with evidence.

A check that the run could not exercise is ``skip`` (not applicable), never a
failure blamed on the agent.
"""

from __future__ import annotations

import itertools
import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorch import snapshot
from lorch.canonical import idempotency_key
from lorch.checksum import sha256_file
from lorch.conformance.driver import AgentUnderTest, Line, Transcript
from lorch.errors import AgentStartError
from lorch.launch import find_executable
from lorch.paths import safe_relpath
from lorch.protocol import TERMINAL_EVENTS, now_rfc3339
from lorch.reports import Status

ACTION_FOR = {
    "builder": "implement",
    "reviewer": "review",
    "spec_maintainer": "update_spec",
    "orchestration": "intake",
}
HEARTBEAT_INTERVAL = 0.25
STATUS_NEXT = {
    "starting": {"starting", "ready", "busy", "stopping", "backoff"},
    "ready": {"ready", "busy", "stopping", "backoff"},
    "busy": {"busy", "ready", "stopping", "backoff"},
    "backoff": {"backoff", "ready", "busy", "stopping", "starting"},
    "stopping": {"stopping"},
}


@dataclass(frozen=True)
class ConformanceCheck:
    id: str
    severity: str  # required | recommended
    rule: str
    why: str
    run: Callable[[Session], Verdict]


@dataclass
class Verdict:
    status: Status  # pass | fail | skip
    evidence: str
    lines: list[int] = field(default_factory=list)


@dataclass
class CheckOutcome:
    check: ConformanceCheck
    verdict: Verdict
    expected_failure: bool = False

    @property
    def blocking(self) -> bool:
        return (
            self.verdict.status == "fail"
            and self.check.severity == "required"
            and not self.expected_failure
        )


@dataclass
class Exchange:
    command: dict[str, Any]
    events: list[Line]
    terminal: Line | None
    heartbeats: list[Line]
    problems: list[Line]

    @property
    def terminal_msg(self) -> dict[str, Any]:
        assert self.terminal is not None and self.terminal.message is not None
        return self.terminal.message


def fingerprint(ws: Path) -> dict[str, tuple[int, int, int, int, str]]:
    """inode, mtime_ns, ctime_ns, size and sha256 of every workspace file."""
    out = {}
    for rel in snapshot.iter_files(ws):
        st = (ws / rel).stat()
        out[rel] = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, sha256_file(ws / rel)[0])
    return out


def diff(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    changed = []
    for rel in sorted(set(a) | set(b)):
        if rel not in a:
            changed.append(f"{rel} created")
        elif rel not in b:
            changed.append(f"{rel} deleted")
        elif a[rel] != b[rel]:
            what = [
                n
                for n, x, y in zip(
                    ("inode", "mtime", "ctime", "size", "sha256"), a[rel], b[rel], strict=True
                )
                if x != y
            ]
            changed.append(f"{rel} ({', '.join(what)} changed)")
    return changed


class Session:
    """One agent, one scratch workspace, one transcript, shared by the checks."""

    def __init__(self, argv: list[str], role: str, workspace: Path | None, timeout: float) -> None:
        self.argv = argv
        self.role = role
        self.timeout = timeout
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        if workspace is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="lorch-conformance-")
            workspace = Path(self._tmp.name)
            (workspace / "README.md").write_text("conformance scratch workspace\n")
        self.workspace = workspace.resolve()
        self.snapshot_id = snapshot.manifest(self.workspace)["snapshot_id"]
        self.transcript = Transcript()
        self.task_id = "T-9001"
        self.round = 0
        env = {
            **os.environ,
            "LORCH_WORKSPACE": str(self.workspace),
            "LORCH_RUN_ID": "run-20000101-000000-00000000",
            "LORCH_ROLE": role,
            "LORCH_AGENT_ID": f"{role}#conformance",
            "LORCH_SNAPSHOT_ID": self.snapshot_id,
            "LORCH_HEARTBEAT_INTERVAL": str(HEARTBEAT_INTERVAL),
        }
        self.agent = AgentUnderTest(argv, self.workspace, env, self.transcript)
        self.cache: dict[str, Any] = {}

    # -- process --------------------------------------------------------------

    def start(self) -> None:
        exe = self.argv[0]
        if os.sep not in exe:
            found = find_executable(exe, self.workspace)
            if found is None:
                raise AgentStartError(f"cannot start {exe!r}: command not found on PATH")
            self.agent.argv = [found, *self.argv[1:]]
        try:
            self.agent.start()
        except OSError as e:
            raise AgentStartError(f"cannot start {exe!r}: {e.strerror}") from None

    def restart(self) -> None:
        self.agent.kill()
        self.start()

    def close(self) -> None:
        self.agent.kill()
        if self._tmp is not None:
            self._tmp.cleanup()

    # -- messages -------------------------------------------------------------

    def command(
        self,
        *,
        inputs: dict[str, Any] | None = None,
        action: str | None = None,
        snapshot_id: str | None = None,
    ) -> dict[str, Any]:
        if inputs is None:
            self.round += 1
            inputs = {"round": self.round, "conformance": True}
        action = action or ACTION_FOR[self.role]
        snap = snapshot_id or self.snapshot_id
        return {
            "kind": "command",
            "message_id": f"cmd-{uuid.uuid4().hex[:12]}",
            "correlation_id": f"corr-{self.task_id}-{uuid.uuid4().hex[:6]}",
            "task_id": self.task_id,
            "idempotency_key": idempotency_key(action, self.task_id, snap, inputs, []),
            "to": {"agent_type": self.role},
            "action": action,
            "inputs": inputs,
            "expected_outputs": [],
            "version": {"snapshot_id": snap},
            "deadline": now_rfc3339(),
            "retry": {"attempt": 0, "max_attempts": 3},
            "priority": 5,
        }

    def again(self, cmd: dict[str, Any]) -> dict[str, Any]:
        return {
            **cmd,
            "message_id": f"cmd-{uuid.uuid4().hex[:12]}",
            "retry": {**cmd["retry"], "attempt": cmd["retry"]["attempt"] + 1},
        }

    def collect(
        self, corr: str | None, timeout: float | None = None, *, until_terminal: bool = True
    ) -> Exchange:
        """Read until a terminal event for ``corr`` (or any event when corr is None)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        ex = Exchange({}, [], None, [], [])
        while True:
            line = self.agent.next(deadline - time.monotonic())
            if line is None:
                return ex
            if line.problem is not None:
                ex.problems.append(line)
                # A bad line usually stands where the answer should be: wait a
                # little for a good one, not the whole timeout.
                deadline = min(deadline, time.monotonic() + 1.0)
                continue
            msg = line.message or {}
            if msg.get("kind") == "heartbeat":
                ex.heartbeats.append(line)
                continue
            if msg.get("kind") != "event":
                continue
            ex.events.append(line)
            # Any terminal event ends the wait; CORR-001 judges its ids.
            if msg.get("event") in TERMINAL_EVENTS:
                ex.terminal = line
                if until_terminal:
                    return ex

    def exchange(self, cmd: dict[str, Any], timeout: float | None = None) -> Exchange:
        self.agent.send(cmd)
        ex = self.collect(cmd["correlation_id"], timeout)
        ex.command = cmd
        return ex

    def baseline(self) -> Exchange:
        """The first real command, shared by several checks."""
        if "baseline" not in self.cache:
            cmd = self.command()
            ex = self.exchange(cmd)
            # A short grace period to catch a second terminal event.
            extra = self.collect(cmd["correlation_id"], 0.3)
            ex.events += extra.events
            ex.heartbeats += extra.heartbeats
            ex.problems += extra.problems
            self.cache["baseline"] = ex
        result: Exchange = self.cache["baseline"]
        return result


def _n(lines: list[Line]) -> list[int]:
    return [ln.n for ln in lines]


def no_terminal(ex: Exchange, what: str, timeout: float) -> Verdict:
    return Verdict("fail", f"no terminal event for {what} within {timeout:g} s", _n(ex.events[-3:]))


def equivalent(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("event", "status", "artifacts")
    return all(a.get(k) == b.get(k) for k in keys)


# -- the checks ---------------------------------------------------------------------


def proto_lines(s: Session) -> Verdict:
    s.baseline()
    bad = [ln for ln in s.transcript.lines if ln.direction == "out" and ln.problem is not None]
    if bad:
        return Verdict("fail", f"line {bad[0].n}: {bad[0].problem}", _n(bad))
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
            _n(beats),
        )
    seqs = [ln.message["seq"] for ln in beats if ln.message]
    if any(b <= a for a, b in itertools.pairwise(seqs)):
        return Verdict("fail", f"heartbeat seq not increasing: {seqs[:10]}", _n(beats))
    pids = {ln.message["pid"] for ln in beats if ln.message}
    if pids != {s.agent.pid}:
        return Verdict(
            "fail", f"heartbeat pid {sorted(pids)} is not the agent's pid {s.agent.pid}", _n(beats)
        )
    statuses = [ln.message["status"] for ln in beats if ln.message]
    for a, b in itertools.pairwise(statuses):
        if b not in STATUS_NEXT[a]:
            return Verdict("fail", f"heartbeat status went {a} → {b}", _n(beats))
    now = time.monotonic() - s.transcript.started
    gaps = [b.at - a.at for a, b in itertools.pairwise(beats)] + [now - beats[-1].at]
    worst = max(gaps)
    if worst > HEARTBEAT_INTERVAL * 3:
        return Verdict(
            "fail",
            f"a gap of {worst:.2f} s between heartbeats "
            f"(interval {HEARTBEAT_INTERVAL} s, 3 missed = unhealthy)",
            _n(beats),
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
            _n(wrong),
        )
    return Verdict("pass", f"{len(ex.events)} events echo task_id and correlation_id")


def one_terminal(s: Session) -> Verdict:
    ex = s.baseline()
    terms = [ln for ln in ex.events if (ln.message or {}).get("event") in TERMINAL_EVENTS]
    if len(terms) != 1:
        return Verdict("fail", f"{len(terms)} terminal events for one command", _n(terms))
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
            _n(again.events),
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
            _n(second.events),
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
        _n(second.events),
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
            _n(again.events),
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
            _n(stray),
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
            _n(extra),
        )
    return Verdict("pass", "every delivery of every command got exactly one terminal event")


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
        return Verdict("fail", f"{what}: expected an error event, got {got}", _n(ex.events[-2:]))
    alive = s.exchange(s.command())
    if alive.terminal is None:
        return Verdict("fail", f"{what}: the agent stopped serving afterwards", _n(alive.events))
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
