"""The mock agent's engine: read commands, answer from the fixture, stay idempotent.

This module speaks the wire protocol on its own (it does not use lorch's codec),
so a framing bug in lorch cannot hide behind the same bug here.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time

# Only what the first heartbeat needs is imported up front; the rest (hashlib,
# fcntl, random, the fixture code, jsonschema) on first use.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    from typing import IO, Any

    from mockagent.journal import Journal

MAX_LINE = 262_144
ACTIONS = ("implement", "implement_changes", "review", "update_spec", "intake", "task_discovery")
TERMINAL = {
    "builder.completed",
    "review.completed",
    "spec.updated",
    "spec.no_changes_needed",
    "spec.changes_requested",
    "orchestration.proposed_tasks",
    "orchestration.needs_clarification",
    "orchestration.plan_conflict",
    "error",
}


TASK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ID_RE = re.compile(r".{1,256}", re.S)
SNAP_RE = re.compile(r"snap-[0-9a-f]{12}")

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def _echo(value: Any, pattern: re.Pattern[str]) -> str:
    """Echo an id from a command, or "unknown" when it is not a valid one."""
    return value if isinstance(value, str) and pattern.fullmatch(value) else "unknown"


_second: tuple[int, str] = (-1, "")


def now() -> str:
    """UTC, microseconds: 2030-01-01T00:00:00.000000Z (the date part formatted once a second)."""
    global _second
    t = time.time()
    sec = int(t)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{int((t - sec) * 1_000_000):06d}Z"


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(6).hex()}"


def sha256_hex(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def canonical(value: Any) -> str:
    return _canonical(value)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data``: the content and the name are durable on return."""
    import contextlib

    from mockagent.journal import fsync_dir, makedirs

    path = os.fspath(path)
    parent = os.path.dirname(path) or "."
    makedirs(parent)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            getattr(os, "fdatasync", os.fsync)(fd)  # the data and the size
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(parent)


class Fatal(Exception):
    """The agent must stop (an injected fault asked for it)."""


class AgentOptions:
    """What the command line decided (paths are absolute or relative strings)."""

    def __init__(
        self,
        *,
        role: str,
        agent_id: str,
        workspace: str,
        state_dir: str,
        fixture: dict[str, Any],
        fixture_dir: str,
        heartbeat_interval: float,
        heartbeats: bool,
        seed: int,
        review_changes: int,
        spec_changes: int,
        expect_snapshot: str | None,
        no_files: bool = False,
    ) -> None:
        self.role = role
        self.agent_id = agent_id
        self.workspace = workspace
        self.state_dir = state_dir
        self.fixture = fixture
        self.fixture_dir = fixture_dir
        self.heartbeat_interval = heartbeat_interval
        self.heartbeats = heartbeats
        self.seed = seed
        self.review_changes = review_changes
        self.spec_changes = spec_changes
        self.expect_snapshot = expect_snapshot
        self.no_files = no_files


class Output:
    """All stdout writes go through here: whole lines, under one lock, flushed."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.closed = False

    def line(self, message: dict[str, Any]) -> None:
        self.raw(_compact(message).encode() + b"\n")

    def chunked(self, data: bytes, size: int, gap: float) -> None:
        """One line written in pieces; the lock keeps heartbeats out of its middle."""
        with self.lock:
            for i in range(0, len(data), size):
                if self.closed:
                    return
                try:
                    self.stream.write(data[i : i + size])
                    self.stream.flush()
                except (BrokenPipeError, ValueError):
                    self.closed = True
                    return
                if gap > 0:
                    time.sleep(gap)

    def raw(self, data: bytes) -> None:
        with self.lock:
            if self.closed:
                return
            try:
                self.stream.write(data)
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                # The reader is gone (lorch died): finish the work at hand so it
                # is cached and journaled, then stop at EOF on stdin.
                self.closed = True


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
            "correlation_id": _echo(corr, ID_RE),
            "task_id": _echo(cmd.get("task_id"), TASK_RE),
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
        data = _compact(ev).encode() + b"\n"
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
        problem = _schema_problem(cmd)
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
        action = cmd["action"]
        task_id = cmd["task_id"]
        attempt = int((cmd.get("retry") or {}).get("attempt", 0))
        digest = sha256_hex(
            canonical([action, task_id, cmd.get("inputs"), cmd.get("version")]).encode()
        )
        journal = self.journal
        self.lock_key(ik, True)
        try:
            # Another mockagent sharing the state dir may have answered it meanwhile.
            journal.refresh()
            cache_by = self._misbehave("cache_by") or "key"
            if self.redo:
                cached = None
            elif cache_by == "key":
                cached = journal.answer(ik)
            else:
                # A cache keyed by the wrong thing (and so blind to the inputs).
                want = cmd["correlation_id"] if cache_by == "correlation" else action
                cached = next(
                    (
                        a
                        for a in reversed(list(journal.answers.values()))
                        if a.get(cache_by) == want
                    ),
                    None,
                )
                if cached is not None:
                    cached = {**cached, "digest": digest}
            if cached is None and self._misbehave("refuse_new"):
                self.new_keys[action] = self.new_keys.get(action, 0) + 1
                if self.new_keys[action] % 2 == 0:
                    self.emit(
                        self.error_event(
                            cmd, "idempotency_conflict", f"key {ik} was used before (it was not)"
                        )
                    )
                    return
            if cached is not None:
                if cached["digest"] != digest:
                    self.emit(
                        self.error_event(
                            cmd,
                            "idempotency_conflict",
                            f"key {ik} was used before with different inputs",
                        )
                    )
                    return
                journal.append(ik, action, task_id, attempt, "cached")
                self.dribble = None
                # A replay answers this delivery: its correlation id, new ids, now.
                corr = _echo(cmd.get("correlation_id"), ID_RE)
                for ev in cached["events"]:
                    self.emit(
                        {
                            **ev,
                            "message_id": new_id("evt"),
                            "correlation_id": corr,
                            "occurred_at": now(),
                        }
                    )
                if self._misbehave("second_terminal"):
                    last = cached["events"][-1]
                    self.emit({**last, "message_id": new_id("evt"), "correlation_id": corr})
                return
            self.heartbeat("busy", task_id)
            # Bookkeeping only: the fsync of the "completed" line makes it durable too.
            journal.append(ik, action, task_id, attempt, "started")
            try:
                events, shown = self.perform(cmd, attempt)
            finally:
                self.heartbeat("ready")
            ok = bool(events) and events[-1]["event"] != "error"
            # The answer is cached in the "completed" line, written once the files
            # are durable; the terminal answer goes out only once that line is
            # durable too: an accepted answer is never followed by a redo.
            journal.append(
                ik,
                action,
                task_id,
                attempt,
                "completed",
                sync=True,
                answer={
                    "digest": digest,
                    "events": events,
                    "correlation": cmd["correlation_id"],
                    "action": action,
                }
                if ok
                else None,
            )
            for ev in events[shown:]:
                self.emit(ev)
        finally:
            self.prev_correlation = cmd["correlation_id"]
            self.lock_key(ik, False)

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
        resp = render(resp, ctx)
        self.dribble = resp.get("dribble")
        fault = resp.get("fault")
        if fault and not self._fault_fires(fault, attempt, self.calls.get(cmd["action"], 1)):
            fault = None
        self._delay(resp.get("delay_ms", 0))
        if fault and fault.get("at", "before_files") == "before_files":
            self.fire(fault, cmd)
        artifacts = []
        out: list[dict[str, Any]] = []
        shown = 0

        def stream(ev: dict[str, Any]) -> None:
            nonlocal shown
            out.append(ev)
            if ev["event"] not in TERMINAL and shown == len(out) - 1:
                self.emit(ev)
                shown += 1

        written: dict[str, dict[str, Any]] = {}
        for f in [] if self.o.no_files else resp.get("files", []):
            art = self.write_file(f)
            artifacts.append(art)
            written[art["path"]] = art
            stream(
                self.event(cmd, "artifact.produced", payload={"path": art["path"]}, artifacts=[art])
            )
        if fault and fault.get("at") == "after_files":
            self.fire(fault, cmd)
        if resp.get("error"):
            err = resp["error"]
            code, msg = (
                (err, err)
                if isinstance(err, str)
                else (err.get("code", "error"), err.get("message", ""))
            )
            out.append(self.error_event(cmd, code, msg))
            return out, shown
        for spec in resp.get("events", []):
            self._delay(spec.get("delay_ms", 0))
            kind = spec["type"]
            arts = spec.get("artifacts")
            if arts is None and kind in TERMINAL and artifacts:
                arts = artifacts
            elif arts is not None:
                arts = [self.fixture_artifact(a, written) for a in arts]
            stream(
                self.event(
                    cmd,
                    kind,
                    status=spec.get("status"),
                    payload=spec.get("payload") or {},
                    artifacts=arts,
                )
            )
        return out, shown

    def _fault_fires(self, fault: dict[str, Any], attempt: int, call: int) -> bool:
        if "attempt" in fault and fault["attempt"] != attempt:
            return False
        if "call" in fault and fault["call"] != call:
            return False
        p = fault.get("probability")
        return not (p is not None and (p <= 0 or self.rng.random() >= p))

    def _delay(self, spec: Any) -> None:
        """Wait a fixed or random (seeded) time; heartbeats go on meanwhile."""
        if isinstance(spec, dict) and "uniform" in spec:
            lo, hi = spec["uniform"]
            ms = self.rng.uniform(lo, hi)
        elif isinstance(spec, dict) and "lognormal" in spec:
            p = spec["lognormal"]
            ms = min(p["cap_ms"], self.rng.lognormvariate(p["mu"], p["sigma"]))
        else:
            ms = float(spec or 0)
        if ms > 0:
            if isinstance(spec, dict):
                self.log(f"random delay {ms:.3f} ms")
            self.stop.wait(ms / 1000.0)

    def write_file(self, spec: dict[str, Any], data: bytes | None = None) -> dict[str, Any]:
        from pathlib import Path

        from mockagent.fixture import safe_target

        target = safe_target(Path(self.o.workspace), spec["path"])
        if data is None and "content_file" in spec:
            data = (Path(self.o.fixture_dir) / spec["content_file"]).read_bytes()
        elif data is None:
            data = str(spec.get("content", "")).encode()
        atomic_write(target, data)
        # misbehave.lie_sha256: claim the hash of other bytes than those written.
        claimed = data + b"\0lie" if self._misbehave("lie_sha256") else data
        return {"path": spec["path"], "sha256": "sha256:" + sha256_hex(claimed), "size": len(data)}

    def fixture_artifact(
        self, spec: dict[str, Any], written: dict[str, dict[str, Any]]
    ) -> dict[str, Any]:
        """An artifact an event of the fixture lists: made real unless ``write`` is false.

        The original fixtures name files they never wrote, with placeholder
        checksums; such a file is written here (``size`` deterministic bytes) and
        reported with its true sha256, so the claim holds. A file this response
        wrote is reported as written; ``"write": false`` sends the claim as is.
        """
        from mockagent.fixture import FixtureError

        claim: dict[str, Any] = {k: spec[k] for k in ("path", "sha256", "size") if k in spec}
        if spec.get("write") is False or self.o.no_files:
            return claim
        path = str(spec["path"])
        if path in written:
            return written[path]
        size = int(spec["size"])
        pattern = f"mockagent placeholder for {path}\n".encode()
        data = (pattern * (size // len(pattern) + 1))[:size]
        try:
            art = self.write_file({"path": path}, data)
        except FixtureError as e:
            self.log(f"fixture artifact not written, sent as claimed: {e}")
            return claim
        self.log(
            f"fixture artifact {path} has no content: wrote {size} placeholder bytes, "
            f"reported with its true {art['sha256']} (the fixture said {spec.get('sha256')})"
        )
        written[path] = art
        return art

    def fire(self, fault: dict[str, Any], cmd: dict[str, Any]) -> None:
        kind = fault["kind"]
        self.log(f"injecting fault {kind}")
        if kind == "exit":
            os._exit(int(fault.get("code", 1)))
        elif kind == "hang":
            self.heartbeats_on = False
            self.stop.wait()
            raise Fatal("hang ended by stop")
        elif kind == "stop_heartbeats":
            self.heartbeats_on = False
        elif kind == "garbage":
            self.out.raw(b"this is not json {{{\n")
        elif kind == "oversized":
            self.out.raw(b'{"kind":"log","pad":"' + b"x" * (MAX_LINE + 10) + b'"}\n')
        elif kind == "half_line":
            self.out.raw(b'{"kind":"event","message_id":"evt-')
            os._exit(int(fault.get("code", 1)))
        elif kind == "stderr_burst":
            n = int(fault.get("lines", 10_000))
            for i in range(n):
                sys.stderr.write(f"mockagent stderr line {i}\n")
            sys.stderr.flush()
        elif kind == "wrong_task":
            self.emit({**self.event(cmd, "builder.progress"), "task_id": "T-9999"})
        elif kind == "wrong_correlation":
            self.emit({**self.event(cmd, "builder.progress"), "correlation_id": "corr-wrong"})


_validator: Any = None


def _schema_problem(cmd: dict[str, Any]) -> str | None:
    """The first way ``cmd`` breaks the command schema (compiled on first use)."""
    from mockagent.schemacheck import is_valid

    if is_valid("command", cmd):
        return None
    global _validator
    if _validator is None:
        from jsonschema import Draft202012Validator

        from mockagent.fixture import schema_file

        _validator = Draft202012Validator(json.loads(schema_file("command").read_text()))
    for err in _validator.iter_errors(cmd):
        where = "$" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path
        )
        return f"{where}: {err.message[:200]}"
    return None


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
