"""The mock agent's engine: read commands, answer from the fixture, stay idempotent.

This module speaks the wire protocol on its own (it does not use lorch's codec),
so a framing bug in lorch cannot hide behind the same bug here.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time

from mockagent.wire import (
    ACTIONS,
    ID_RE,
    MAX_LINE,
    SNAP_RE,
    TASK_RE,
    TERMINAL,
    AgentOptions,
    Output,
    canonical,
    compact,
    echo,
    new_id,
    now,
    sha256_hex,
)

# Only what the first heartbeat needs is imported up front; the rest (the
# command validator, hashlib, fcntl, random, the fixture code, jsonschema) on
# first use.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    from collections.abc import Callable
    from typing import Any

    from mockagent.journal import Journal


class Fatal(Exception):
    """The agent must stop (an injected fault asked for it)."""


class Agent:
    def __init__(self, opts: AgentOptions, out: Output) -> None:
        self.o = opts
        self.out = out
        self.started = time.monotonic()
        self.seq = 0
        self.status = "starting"
        self.heartbeats_on = opts.heartbeats and not self._misbehave("skip_heartbeats")
        self.redo = bool(
            self._misbehave("redo_on_repeat") or self._misbehave("rewrite_files_on_repeat")
        )
        self.stop = threading.Event()
        self.calls: dict[str, int] = {}
        self.dribble: dict[str, Any] | None = None
        self._rng: random.Random | None = None
        self._lock_fd = -1
        self._journal: Journal | None = None
        self.prev_correlation: str | None = None  # misbehave.stale_correlation
        self.new_keys: dict[str, int] = {}  # misbehave.refuse_new: new keys per action

    def open_state(self) -> None:
        """Open the state dir: read the journal, mark runs of dead processes interrupted."""
        from mockagent.journal import Journal

        self._journal = Journal(self.o.state_dir)
        os.makedirs(os.path.join(self.o.state_dir, "locks"), mode=0o700, exist_ok=True)

    @property
    def journal(self) -> Journal:
        if self._journal is None:
            self.open_state()
            assert self._journal is not None
        return self._journal

    @property
    def keys_by_action(self) -> dict[str, dict[str, int]]:
        """Call numbers per action, in the order keys were first started: kept in
        the journal, so a restarted agent continues a sequence where it was."""
        return self.journal.keys_by_action

    @property
    def rng(self) -> random.Random:
        if self._rng is None:
            import random

            self._rng = random.Random(self.o.seed)
        return self._rng

    # -- misc -----------------------------------------------------------------

    def _misbehave(self, name: str) -> Any:
        return (self.o.fixture.get("misbehave") or {}).get(name)

    def log(self, text: str) -> None:
        sys.stderr.write(f"mockagent[{self.o.role}] {text}\n")
        sys.stderr.flush()

    # -- heartbeats -----------------------------------------------------------

    def heartbeat(self, status: str | None = None, task_id: str | None = None) -> None:
        if status:
            self.status = status
        if not self.heartbeats_on:
            return
        hb: dict[str, Any] = {
            "kind": "heartbeat",
            "agent": {"agent_type": self.o.role, "agent_id": self.o.agent_id},
            "seq": self.seq,
            "status": self.status,
            "pid": os.getpid(),
            "ppid": os.getppid(),
            "uptime_s": round(time.monotonic() - self.started, 3),
            "last_activity_at": now(),
        }
        if task_id:
            hb["task_id"] = task_id
        self.seq += 1
        self.out.line(hb)

    def heartbeat_loop(self) -> None:
        while not self.stop.wait(self.o.heartbeat_interval):
            self.heartbeat()

    # -- commands -------------------------------------------------------------

    def error_event(self, cmd: dict[str, Any] | None, code: str, message: str) -> dict[str, Any]:
        return self.event(cmd, "error", status="failed", payload={"code": code, "message": message})

    def event(
        self,
        cmd: dict[str, Any] | None,
        kind: str,
        *,
        status: str | None = None,
        payload: dict[str, Any] | None = None,
        artifacts: list[dict[str, Any]] | None = None,
    ) -> dict[str, Any]:
        cmd = cmd or {}
        corr = cmd.get("correlation_id")
        if kind not in TERMINAL and self.prev_correlation and self._misbehave("stale_correlation"):
            corr = self.prev_correlation  # the previous command's id on progress events
        ev: dict[str, Any] = {
            "kind": "event",
            "message_id": new_id("evt"),
            "correlation_id": echo(corr, ID_RE),
            "task_id": echo(cmd.get("task_id"), TASK_RE),
            "from": {"agent_type": self.o.role, "agent_id": self.o.agent_id},
            "event": kind,
            "payload": payload or {},
            "occurred_at": now(),
        }
        if status is not None:
            ev["status"] = status
        if artifacts:
            ev["artifacts"] = artifacts
        version = cmd.get("version")
        snap = version.get("snapshot_id") if isinstance(version, dict) else None
        if isinstance(snap, str) and SNAP_RE.fullmatch(snap):
            ev["observed_version"] = {"snapshot_id": snap}
        return ev

    def emit(self, ev: dict[str, Any]) -> None:
        mode = self._misbehave("correlation_id")
        if mode == "drop":
            ev = {k: v for k, v in ev.items() if k != "correlation_id"}
        elif mode == "change":
            ev = {**ev, "correlation_id": ev["correlation_id"] + "-other"}
        if self.dribble is None:
            self.out.line(ev)
            return
        # One line in small chunks with gaps: readers must reassemble lines.
        data = compact(ev).encode() + b"\n"
        gap = float(self.dribble.get("gap_ms", 0)) / 1000.0
        self.out.chunked(data, int(self.dribble["chunk"]), gap)

    def handle_line(self, raw: bytes) -> None:
        if len(raw) > MAX_LINE:
            self.emit(self.error_event(None, "line_too_long", f"line of {len(raw)} bytes"))
            return
        try:
            cmd = json.loads(raw)
        except ValueError as e:
            self.emit(self.error_event(None, "bad_json", f"invalid JSON: {e}"))
            return
        if not isinstance(cmd, dict) or cmd.get("kind") != "command":
            self.emit(self.error_event(None, "schema_violation", "expected a command object"))
            return
        missing = [
            k for k in ("correlation_id", "task_id", "idempotency_key", "action") if k not in cmd
        ]
        if missing:
            self.emit(self.error_event(cmd, "schema_violation", f"missing {', '.join(missing)}"))
            return
        action = cmd["action"]
        if action not in ACTIONS:
            self.emit(self.error_event(cmd, "unknown_action", f"unknown action {action!r}"))
            return
        from mockagent.schemacheck import schema_problem

        problem = schema_problem(cmd)
        if problem is not None:
            self.emit(self.error_event(cmd, "schema_violation", problem))
            return
        snap = (cmd.get("version") or {}).get("snapshot_id")
        if (
            self.o.expect_snapshot
            and snap != self.o.expect_snapshot
            and not self._misbehave("ignore_version")
        ):
            self.emit(
                self.error_event(
                    cmd,
                    "version_mismatch",
                    f"command snapshot {snap} differs from workspace {self.o.expect_snapshot}",
                )
            )
            return
        self.execute(cmd)

    def execute(self, cmd: dict[str, Any]) -> None:
        ik = cmd["idempotency_key"]
        attempt = int((cmd.get("retry") or {}).get("attempt", 0))
        digest = sha256_hex(
            canonical(
                [cmd["action"], cmd["task_id"], cmd.get("inputs"), cmd.get("version")]
            ).encode()
        )
        self.lock_key(ik, True)
        try:
            # Another mockagent sharing the state dir may have answered it meanwhile.
            self.journal.refresh()
            cached = self._cached(cmd, digest)
            if cached is not None:
                self._replay(cmd, cached, digest, attempt)
            elif not self._refuses_new(cmd):
                self._work(cmd, digest, attempt)
        finally:
            self.prev_correlation = cmd["correlation_id"]
            self.lock_key(ik, False)

    def _cached(self, cmd: dict[str, Any], digest: str) -> dict[str, Any] | None:
        """The journaled answer for ``cmd``'s key (or, misbehaving, for the wrong thing)."""
        if self.redo:
            return None
        cache_by = self._misbehave("cache_by") or "key"
        if cache_by == "key":
            return self.journal.answer(cmd["idempotency_key"])
        # A cache keyed by the wrong thing (and so blind to the inputs).
        want = cmd["correlation_id"] if cache_by == "correlation" else cmd["action"]
        answers = reversed(list(self.journal.answers.values()))
        found = next((a for a in answers if a.get(cache_by) == want), None)
        return {**found, "digest": digest} if found is not None else None

    def _refuses_new(self, cmd: dict[str, Any]) -> bool:
        """misbehave.refuse_new: every second new key of an action is refused."""
        if not self._misbehave("refuse_new"):
            return False
        action = cmd["action"]
        self.new_keys[action] = self.new_keys.get(action, 0) + 1
        if self.new_keys[action] % 2:
            return False
        ik = cmd["idempotency_key"]
        self.emit(
            self.error_event(cmd, "idempotency_conflict", f"key {ik} was used before (it was not)")
        )
        return True

    def _replay(
        self, cmd: dict[str, Any], cached: dict[str, Any], digest: str, attempt: int
    ) -> None:
        ik = cmd["idempotency_key"]
        if cached["digest"] != digest:
            why = f"key {ik} was used before with different inputs"
            self.emit(self.error_event(cmd, "idempotency_conflict", why))
            return
        self.journal.append(ik, cmd["action"], cmd["task_id"], attempt, "cached")
        self.dribble = None
        # A replay answers this delivery: its correlation id, new ids, now.
        corr = echo(cmd.get("correlation_id"), ID_RE)
        for ev in cached["events"]:
            self.emit(
                {**ev, "message_id": new_id("evt"), "correlation_id": corr, "occurred_at": now()}
            )
        if self._misbehave("second_terminal"):
            last = cached["events"][-1]
            self.emit({**last, "message_id": new_id("evt"), "correlation_id": corr})

    def _work(self, cmd: dict[str, Any], digest: str, attempt: int) -> None:
        ik, action, task_id = cmd["idempotency_key"], cmd["action"], cmd["task_id"]
        self.heartbeat("busy", task_id)
        # Bookkeeping only: the fsync of the "completed" line makes it durable too.
        self.journal.append(ik, action, task_id, attempt, "started")
        try:
            events, shown = self.perform(cmd, attempt)
        finally:
            self.heartbeat("ready")
        ok = bool(events) and events[-1]["event"] != "error"
        # The answer is cached in the "completed" line, written once the files
        # are durable; the terminal answer goes out only once that line is
        # durable too: an accepted answer is never followed by a redo.
        answer = {
            "digest": digest,
            "events": events,
            "correlation": cmd["correlation_id"],
            "action": action,
        }
        self.journal.append(
            ik, action, task_id, attempt, "completed", sync=True, answer=answer if ok else None
        )
        for ev in events[shown:]:
            self.emit(ev)

    def lock_key(self, ik: str, lock: bool) -> None:
        """Exclusive per key, across processes: a byte-range lock in one shared file.

        The byte at the key's offset stands for the key (a collision only makes
        two keys wait for each other); the kernel drops the lock if we die.
        """
        import fcntl

        if self._lock_fd < 0:
            self._lock_fd = os.open(
                os.path.join(self.o.state_dir, "locks", "keys.lock"),
                os.O_RDWR | os.O_CREAT,
                0o600,
            )
        offset = int(ik.removeprefix("ik:")[:12], 16)
        fcntl.lockf(self._lock_fd, fcntl.LOCK_EX if lock else fcntl.LOCK_UN, 1, offset)

    # -- responses ------------------------------------------------------------

    def response_for(self, cmd: dict[str, Any]) -> dict[str, Any]:
        from mockagent.fixture import default_response, pick_response

        action = cmd["action"]
        seen = self.keys_by_action.setdefault(action, {})
        self.calls[action] = seen.setdefault(cmd["idempotency_key"], len(seen) + 1)
        picked = pick_response(self.o.fixture, cmd, self.calls[action])
        if picked is not None:
            return picked
        return default_response(self.o.role, cmd, self.o.review_changes, self.o.spec_changes)

    def perform(self, cmd: dict[str, Any], attempt: int) -> tuple[list[dict[str, Any]], int]:
        """Do the work; return all events and how many were already streamed.

        Non-terminal events stream out as they happen (with their delays); the
        terminal one is left for the caller to send once the work is durable.
        """
        from mockagent import faults
        from mockagent import files as workspace_files

        resp = self._rendered_response(cmd, attempt)
        self.dribble = resp.get("dribble")
        fault = resp.get("fault")
        if fault and not faults.fires(self, fault, attempt, self.calls.get(cmd["action"], 1)):
            fault = None
        faults.delay(self, resp.get("delay_ms", 0))
        if fault and fault.get("at", "before_files") == "before_files":
            faults.fire(self, fault, cmd)
        stream = _Stream(self.emit)
        files: list[dict[str, Any]] = []  # the artifacts of the response's own files
        written: dict[str, dict[str, Any]] = {}  # those and the placeholders, by path
        for f in [] if self.o.no_files else resp.get("files", []):
            art = workspace_files.write_file(self, f)
            files.append(art)
            written[art["path"]] = art
            stream.add(
                self.event(cmd, "artifact.produced", payload={"path": art["path"]}, artifacts=[art])
            )
        if fault and fault.get("at") == "after_files":
            faults.fire(self, fault, cmd)
        if resp.get("error"):
            err = resp["error"]
            code, msg = (
                (err, err)
                if isinstance(err, str)
                else (err.get("code", "error"), err.get("message", ""))
            )
            stream.events.append(self.error_event(cmd, code, msg))
            return stream.events, stream.shown
        for spec in resp.get("events", []):
            faults.delay(self, spec.get("delay_ms", 0))
            stream.add(self._fixture_event(cmd, spec, files, written))
        return stream.events, stream.shown

    def _rendered_response(self, cmd: dict[str, Any], attempt: int) -> dict[str, Any]:
        from mockagent.fixture import render

        resp = self.response_for(cmd)
        ctx = {
            "task_id": cmd["task_id"],
            "ik": cmd["idempotency_key"],
            "correlation_id": cmd["correlation_id"],
            "round": str((cmd.get("inputs") or {}).get("round", 1)),
            "snapshot_id": str((cmd.get("version") or {}).get("snapshot_id", "")),
            "call": str(self.calls.get(cmd["action"], 1)),
            "attempt": str(attempt),
            "counter": str(sum(len(keys) for keys in self.keys_by_action.values())),
        }
        rendered: dict[str, Any] = render(resp, ctx)
        return rendered

    def _fixture_event(
        self,
        cmd: dict[str, Any],
        spec: dict[str, Any],
        files: list[dict[str, Any]],
        written: dict[str, dict[str, Any]],
    ) -> dict[str, Any]:
        """An event the fixture lists; a terminal one without artifacts names the files written."""
        kind = spec["type"]
        arts = spec.get("artifacts")
        if arts is None and kind in TERMINAL and files:
            arts = files
        elif arts is not None:
            from mockagent import files as workspace_files

            arts = [workspace_files.fixture_artifact(self, a, written) for a in arts]
        return self.event(
            cmd, kind, status=spec.get("status"), payload=spec.get("payload") or {}, artifacts=arts
        )


class _Stream:
    """The events of one command: non-terminal ones go out as soon as they are made,
    as long as nothing before them was held back."""

    def __init__(self, emit: Callable[[dict[str, Any]], None]) -> None:
        self.emit = emit
        self.events: list[dict[str, Any]] = []
        self.shown = 0

    def add(self, ev: dict[str, Any]) -> None:
        self.events.append(ev)
        if ev["event"] not in TERMINAL and self.shown == len(self.events) - 1:
            self.emit(ev)
            self.shown += 1


def serve(opts: AgentOptions) -> int:
    out = Output(sys.stdout.buffer)
    agent = Agent(opts, out)

    def on_term(signum: int, frame: object) -> None:
        agent.stop.set()
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    agent.heartbeat("starting")
    agent.open_state()
    if agent.heartbeats_on:
        threading.Thread(target=agent.heartbeat_loop, daemon=True).start()
    agent.heartbeat("ready")
    stdin = sys.stdin.buffer
    while True:
        raw = stdin.readline(MAX_LINE + 2)
        if not raw:
            break
        if not raw.endswith(b"\n") and len(raw) > MAX_LINE:
            # Discard the rest of an over-long line without holding it in memory.
            size = len(raw)
            while raw and not raw.endswith(b"\n"):
                raw = stdin.readline(1 << 16)
                size += len(raw)
            agent.emit(agent.error_event(None, "line_too_long", f"line of {size} bytes"))
            continue
        line = raw.rstrip(b"\n")
        if not line.strip():
            continue
        try:
            agent.handle_line(line)
        except Fatal:
            break
    agent.heartbeat("stopping")
    agent.stop.set()
    return 0
