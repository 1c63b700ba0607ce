"""``lorch run`` and ``lorch resume``: one loop over the ledger, shared by both.

Write-ahead everywhere (DESIGN.md §5.1): a command is appended and fsynced
before its first byte reaches the agent; an agent's event is appended and
fsynced before lorch acts on it. Receipts, ``state/run.json``, the index and
the transcript are derived from the ledger and rebuilt by resume.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import queue
import random
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from lorch import _planted, failpoint, ledger, protocol, snapshot, store, transcript
from lorch.atomic import ensure_dir
from lorch.checkpoint import TurnCheckpoints
from lorch.checksum import sha256_file
from lorch.config import Config, ensure, load
from lorch.errors import AgentError, ConfigError, LorchError, PathEscape, StorageError, UsageError
from lorch.launch import agent_env, resolve_argv
from lorch.paths import safe_relpath
from lorch.procs import kill_orphan
from lorch.supervisor import (
    AgentProcess,
    Backoff,
    Inbox,
    Incoming,
    Redactor,
    secret_values,
)
from lorch.workflow import ROLE_OF, Check, Finish, Pending, Send, State, next_step

Record = dict[str, Any]

# While a run goes on, state/run.json may lag the ledger by at most this long.
STATE_REFRESH_S = 1.0
# How long an agent's event may wait for the next one to share its fsync
# (group commit); a terminal event is made durable with the command that follows.
GROUP_COMMIT_S = 0.01
# Receipts are written in batches of this many while agents answer fast, and all
# at once when an agent has been working for RECEIPT_DELAY_S (or the run ends).
RECEIPT_BATCH = 16
RECEIPT_DELAY_S = 0.1


class Interrupted(LorchError):
    """Ctrl-C: agents were stopped and the run can be resumed."""

    exit_code = 130


@dataclass
class Outcome:
    run_id: str
    status: str
    reason: str = ""


@dataclass
class Console:
    """Where the live transcript goes (stdout by default); colour only on a TTY."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    color: bool | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.color is None:
            self.color = self.out.isatty() and os.environ.get("NO_COLOR") is None
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()

    def record(self, record: Record) -> None:
        text = transcript.render(record, color=bool(self.color))
        if text is not None:
            self.say(text)


def new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


def _id(prefix: str) -> str:
    return protocol.new_message_id(prefix)


def _deadline(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextlib.contextmanager
def workspace_lock(workspace: Path) -> Iterator[None]:
    """One lorch process per workspace at a time."""
    ensure_dir(workspace / "state")
    path = workspace / "state" / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"{workspace}: another lorch process is running in this workspace"
            ) from None
        yield
    finally:
        os.close(fd)


class ReceiptWriter:
    """Writes one receipt per accepted command, never twice for the same key."""

    def __init__(self, workspace: Path, run_id: str, task_id: str) -> None:
        self.workspace = workspace
        self.run_id = run_id
        existing = store.iter_receipts(workspace, task_id)
        # Only the receipts found on disk at start: a live run accepts each key
        # once, so this need not grow (memory stays flat over long runs).
        self.done = {
            data.get("idempotency_key") for _, data in existing if data.get("run_id") == run_id
        }
        self.next = store.next_step(workspace, task_id)

    def write(self, pending: Pending, snapshot_id: str) -> None:
        self.write_batch([(pending, snapshot_id)])

    def write_batch(self, batch: list[tuple[Pending, str]]) -> None:
        """Receipts for several accepted commands, written together."""
        receipts = [r for p, snap in batch if (r := self._receipt(p, snap)) is not None]
        written = store.write_receipts(self.workspace, receipts, start=self.next)
        if written:
            self.next = max(step for _, step in written) + 1

    def _receipt(self, pending: Pending, snapshot_id: str) -> Record | None:
        ik = pending.ik
        if ik in self.done or pending.terminal is None:
            return None
        cmd, ev = pending.command, pending.terminal
        receipt: Record = {
            "run_id": self.run_id,
            "task_id": cmd["task_id"],
            "action": cmd["action"],
            "agent_type": cmd["to"]["agent_type"],
            "idempotency_key": ik,
            "correlation_id": cmd["correlation_id"],
            "command_message_id": cmd["message_id"],
            "snapshot_id": snapshot_id,
            "terminal_event": ev["event"],
            "event_ids": list(pending.event_ids),
            "artifacts": list(ev.get("artifacts") or []),
            "completed_at": ev.get("occurred_at") or protocol.now_rfc3339(),
        }
        if "status" in ev:
            receipt["status"] = ev["status"]
        if pending.pre is not None and pending.post is not None:
            receipt["checkpoint"] = {"pre": pending.pre, "post": pending.post}
        return receipt


class DerivedWriter:
    """Writes derived files (receipts, run.json) in order, off the critical path.

    They are caches of the ledger (DESIGN.md §5.2): each is queued only once the
    ledger records it derives from are durable, and a crash that loses a queued
    write is repaired by resume, which rebuilds what is missing. So lorch need
    not wait for these writes before it sends the next command; it waits for
    them (``flush``) before it records the end of a run and before it exits.
    Writes are held (``submit``) until lorch has sent its next command
    (``release``), so their fsyncs do not queue up in the file system's journal
    in front of the command's own fsync. A failed write is raised at the next
    ``submit``, ``release`` or ``flush``.
    """

    def __init__(self) -> None:
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._held: list[Callable[[], None]] = []
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def submit(self, write: Callable[[], None]) -> None:
        self._raise()
        self._held.append(write)

    def release(self) -> None:
        """Start the held writes (lorch is now waiting for an agent)."""
        self._raise()
        if not self._held:
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, daemon=True, name="derived")
            self._thread.start()
        for write in self._held:
            self._queue.put(write)
        self._held.clear()

    def flush(self) -> None:
        self.release()
        self._queue.join()
        self._raise()

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _raise(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def _loop(self) -> None:
        while True:
            write = self._queue.get()
            try:
                if write is None:
                    return
                if self._error is None:
                    write()
            except BaseException as e:  # handed to the main thread
                self._error = e
            finally:
                self._queue.task_done()


class Runner:
    def __init__(
        self,
        workspace: Path,
        config: Config,
        console: Console,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.workspace = workspace
        self.config = config
        self.console = console
        self.clock = clock
        self.state = State()
        self.ledger: ledger.Ledger | None = None
        self.agents: dict[str, AgentProcess] = {}
        self.inbox = Inbox()
        self.generation = 0
        self.stop_event = threading.Event()
        self.redactor = Redactor(
            secret_values(dict(os.environ), *(a.env for a in config.agents.values()))
        )
        p = config.policy
        self.backoff = Backoff(
            p.backoff_initial_s, p.backoff_factor, p.backoff_max_s, rng or random.Random()
        )
        self.receipts: ReceiptWriter | None = None
        self._state_key: tuple[object, ...] | None = None
        self.derived = DerivedWriter()
        self._unshown: list[Record] = []
        self._receipts_held: list[tuple[Pending, str]] = []
        self._events_waiting = False  # agents' events appended, not yet synced
        self._state_at: float | None = None
        self.turns = TurnCheckpoints(workspace, durable=config.policy.fsync)

    # -- ledger ---------------------------------------------------------------

    def append(
        self,
        record: Record,
        *,
        sync: bool = True,
        trusted: bool = False,
        show: bool = True,
        line: bytes | None = None,
    ) -> None:
        """Validate, append, fold; show once durable. ``trusted``: validated on receipt.

        ``sync=False`` (agents' events) leaves the record for the next fsync:
        nothing outside lorch's memory — a command sent, a derived file, a line
        of transcript — depends on it before :meth:`sync` (DESIGN.md §5.1,
        docs/decisions.md D16). ``show=False`` leaves the transcript lines for
        the caller to show (a command is shown once it is on its way).
        """
        assert self.ledger is not None
        if not trusted:
            protocol.validate_message(record, source=f"ledger record {self.ledger.records + 1}")
        self.ledger.append(record, sync=sync, line=line)
        self.state.fold(record)
        self._unshown.append(record)
        if show:
            self._show_if_durable()

    def sync(self) -> None:
        """Make every appended record durable, then show the ones not shown yet."""
        if self.ledger is not None:
            self.ledger.sync()
        self._events_waiting = False
        self._show()

    def _show_if_durable(self) -> None:
        if self.ledger is not None and not self.ledger.unsynced:
            self._show()

    def _show(self) -> None:
        for record in self._unshown:
            self.console.record(record)
        self._unshown.clear()

    def system(
        self, name: str, payload: Record, correlation_id: str | None = None, *, sync: bool = True
    ) -> None:
        self.append(
            {
                "kind": "event",
                "message_id": _id("evt"),
                "correlation_id": correlation_id or self.state.run_id,
                "task_id": self.state.task_id,
                "from": {"agent_type": "system"},
                "event": name,
                "payload": payload,
                "occurred_at": protocol.now_rfc3339(),
            },
            sync=sync,
        )

    def start_run(self, run_id: str, task: dict[str, Any]) -> None:
        """Record 1 of every ledger: the run, its task and the policy it runs under."""
        self.state.task = task
        policy = self.config.policy
        self.system(
            "system.run_started",
            {
                "run_id": run_id,
                "task": task,
                "policy": policy.as_record(),
                "config_digest": self.config.digest,
            },
            run_id,
        )
        self.receipts = ReceiptWriter(self.workspace, run_id, task["id"])
        self.state.on_accept = self._on_accept

    def take_snapshot(self) -> None:
        manifest = snapshot.take(self.workspace)
        self.system(
            "system.snapshot",
            {
                "snapshot_id": manifest["snapshot_id"],
                "files": len(manifest["files"]),
                "manifest": f"snapshots/{manifest['snapshot_id']}.manifest.json",
            },
        )

    def _on_accept(self, pending: Pending) -> None:
        if self.receipts is not None and self.state.snapshot_id:
            # Held in memory until the answer is durable and lorch is waiting.
            self._receipts_held.append((pending, self.state.snapshot_id))

    def release_derived(self, *, force: bool = False) -> None:
        """Hand held derived writes to the background writer.

        Receipts go in batches of ``RECEIPT_BATCH`` while agents answer fast,
        so a long loop costs a few syncs per batch, not two per command; when an
        agent takes a while (``RECEIPT_DELAY_S``) or the run ends, they all go.
        Only records already durable are ever handed over (DESIGN.md §5.2).
        """
        if not force and len(self._receipts_held) < RECEIPT_BATCH:
            return
        receipts, batch = self.receipts, self._receipts_held
        self._receipts_held = []
        if receipts is not None and batch:
            self.derived.submit(lambda: receipts.write_batch(batch))
        self.derived.release()

    # -- derived state --------------------------------------------------------

    def write_state(self, *, force: bool = True) -> None:
        """Rewrite ``state/run.json`` (a cache of the ledger, DESIGN.md §5.2).

        While a run goes on (``force=False``) it is rewritten only when the run's
        status, phase or agents change, or when the last write is
        ``STATE_REFRESH_S`` old: a review loop then costs no run.json write per
        command (docs/decisions.md, D13). Resume and the end of a run always write it.
        """
        s = self.state
        if not s.run_id:
            return
        p = s.pending
        action = p.command["action"] if p else s.last_action
        stage = {
            "implement": "implement",
            "implement_changes": "implement",
            "review": "review",
            "update_spec": "spec",
        }.get(str(action), "starting")
        if s.finished:
            stage = "done"
        key = (s.status, stage == "spec", repr(s.agents), repr(s.restarts))
        t = self.clock()
        if (
            not force
            and key == self._state_key
            and self._state_at is not None
            and t - self._state_at < STATE_REFRESH_S
        ):
            return
        self._state_key, self._state_at = key, t
        now = protocol.now_rfc3339()
        body = {
            "run_id": s.run_id,
            "task_id": s.task_id,
            "status": s.status,
            "stage": stage,
            "review_round": s.rounds.get("review", 0),
            "spec_round": s.rounds.get("update_spec", 0),
            "snapshot_id": s.snapshot_id,
            "started_at": s.started_at or now,
            "updated_at": now,
            "ledger_records": s.records,
            "pending": None
            if p is None
            else {
                "idempotency_key": p.ik,
                "correlation_id": p.command["correlation_id"],
                "action": p.command["action"],
                "agent_type": p.role,
                "attempt": p.attempt,
            },
            "agents": {role: dict(v) for role, v in s.agents.items()},
            "failure": s.failure,
        }
        self.derived.submit(lambda: store.write_run_state(self.workspace, body))

    def write_index(self) -> None:
        s = self.state
        now = protocol.now_rfc3339()
        store.update_index(
            self.workspace,
            {
                "run_id": s.run_id,
                "task_id": s.task_id,
                "status": s.status,
                "snapshot_id": s.snapshot_id,
                "started_at": s.started_at or now,
                "updated_at": now,
                "ledger": f"events/{s.run_id}.ndjson",
                "failure": s.failure,
            },
        )

    def flush_derived(self) -> None:
        """Make the ledger durable, then write every held or queued derived file."""
        self.sync()
        self.release_derived(force=True)
        self.derived.flush()

    def write_derived(self) -> None:
        self.sync()
        self.write_state()
        self.flush_derived()
        self.write_index()
        transcript.rebuild(self.workspace, self.state.run_id)

    # -- agents ---------------------------------------------------------------

    def agent(self, role: str) -> AgentProcess:
        proc = self.agents.get(role)
        if proc is not None and proc.alive():
            return proc
        if proc is not None:
            proc.kill()
        cfg = self.config.agents.get(role)
        if cfg is None:
            raise ConfigError(f"lorch.json: $.agents.{role}: no agent configured for role {role}")
        cwd = (self.workspace / cfg.cwd) if cfg.cwd else self.workspace
        argv = resolve_argv(role, cfg.cmd, cwd)
        self.generation += 1
        env = agent_env(
            base=os.environ,
            extra=cfg.env,
            workspace=self.workspace,
            run_id=self.state.run_id,
            role=role,
            agent_id=f"{role}#{self.generation}",
            snapshot_id=self.state.snapshot_id,
            heartbeat_interval=cfg.heartbeat_interval_s,
        )
        proc = AgentProcess(
            role,
            argv,
            cwd=cwd,
            env=env,
            inbox=self.inbox,
            log_path=self.workspace / "logs" / role / f"{self.state.run_id}.ndjson",
            redactor=self.redactor,
            generation=self.generation,
            clock=self.clock,
            heartbeat_interval=cfg.heartbeat_interval_s,
            heartbeat_misses=self.config.policy.heartbeat_misses,
            on_stderr=self.console.say if self.console.verbose else None,
        )
        self.agents[role] = proc
        self.system(
            "system.agent_started",
            {
                "role": role,
                "pid": proc.pid,
                "pgid": proc.pgid,
                "argv": [self.redactor.text(a) for a in argv],
            },
        )
        return proc

    def stop_agents(self) -> None:
        procs = list(self.agents.values())
        for proc in procs:
            proc.close_input()  # all at once: they wind down in parallel
        for proc in procs:
            proc.stop()
        self.agents.clear()

    def start_agents(self) -> None:
        """Start every configured role up front, so their start-up overlaps."""
        for role in ("builder", "reviewer", "spec_maintainer", "orchestration"):
            if role in self.config.agents and role not in self.agents:
                try:
                    self.agent(role)
                except LorchError:
                    return  # the first command to that role will report it

    def kill_agent(self, role: str) -> int | None:
        proc = self.agents.pop(role, None)
        return proc.kill() if proc is not None else None

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.inbox.wait(seconds, self.stop_event)  # agents' stdout is still read

    # -- the loop ---------------------------------------------------------------

    def drive(self) -> Outcome:
        if not self.state.finished:
            self.start_agents()
        while True:
            step = next_step(self.state, fresh=self._fresh)
            if isinstance(step, Finish):
                # Every receipt is on disk before the run's end is recorded.
                self.flush_derived()
                if not self.state.finished:
                    if step.status == "completed":
                        self.system("system.run_completed", {"reason": ""})
                    else:
                        self.system("system.run_failed", {"reason": step.reason})
                self.stop_agents()
                self.write_derived()
                return Outcome(self.state.run_id, self.state.status, self.state.failure or "")
            if isinstance(step, Check):
                self.check(step.pending)
                continue
            self.send(step)

    def _fresh(self, action: str) -> tuple[str, str]:
        """A new command's message id and deadline (its action's timeout from now)."""
        role = ROLE_OF.get(action)
        agent = self.config.agents.get(role) if role else None
        timeout = agent.timeouts_s.get(action, 600.0) if agent else 600.0
        return _id("cmd"), _deadline(timeout)

    def check(self, pending: Pending) -> None:
        if self.config.agents[pending.role].needs_checkpoints:
            for name, payload in self.turns.after_turn(pending):
                self.system(name, payload, pending.command["correlation_id"])
        problems = self.artifact_problems(pending.terminal or {})
        if not problems:
            self.state.accept()
            return
        for path, reason in problems:
            self.system(
                "system.artifact_rejected",
                {"path": path, "reason": reason},
                pending.command["correlation_id"],
            )
        self.system(
            "system.command_failed",
            {
                "idempotency_key": pending.ik,
                "attempt": pending.attempt,
                "reason": f"artifact {problems[0][0]!r} rejected: {problems[0][1]}",
                "code": "artifact_mismatch",
            },
            pending.command["correlation_id"],
        )

    def artifact_problems(self, event: Record) -> list[tuple[str, str]]:
        problems = []
        for art in event.get("artifacts") or []:
            path = str(art.get("path"))
            try:
                full = safe_relpath(self.workspace, path)
            except PathEscape as e:
                problems.append((path, str(e)))
                continue
            try:
                sha, size = sha256_file(full)
            except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
                problems.append((path, "no such file in the workspace"))
                continue
            except OSError as e:
                problems.append((path, f"cannot read it: {e.strerror}"))
                continue
            if sha != art.get("sha256") or size != art.get("size"):
                problems.append(
                    (
                        path,
                        f"agent claimed {art.get('sha256')} ({art.get('size')} bytes), "
                        f"file has {sha} ({size} bytes)",
                    )
                )
        return problems

    def send(self, step: Send) -> None:
        cmd = step.command
        if step.resend and _planted.enabled("new_key_on_resend"):
            cmd = {**cmd, "idempotency_key": "ik:" + os.urandom(32).hex()}
        role = cmd["to"]["agent_type"]
        try:
            proc = self.agent(role)
        except AgentError as e:
            self.fail_attempt(cmd, str(e), "agent_start_failed", role=role, kill=False)
            self.restart(role, str(e))
            return
        if self.config.agents[role].needs_checkpoints:
            # Write-ahead like the command itself: the checkpoint (or the rollback
            # to it) is durable with the command, before its first byte goes out.
            records, _tree = self.turns.before_send(self.state, cmd)
            for name, payload in records:
                self.system(name, payload, cmd["correlation_id"], sync=False)
        line = protocol.encode(cmd)  # the same bytes go to the ledger and to the agent
        self.append(cmd, sync=not _planted.enabled("skip_command_fsync"), show=False, line=line)
        failpoint.busy_role[:] = [role]
        try:
            # Durable now: send it first, then do what can wait while the agent works.
            sent = proc.send(line)
            self._show_if_durable()
            if not sent:
                self.on_agent_gone(cmd, proc)
                return
            self.write_state(force=False)
            self.release_derived()
            self.wait_for_answer(cmd, proc)
        finally:
            failpoint.busy_role[:] = []

    def wait_for_answer(self, cmd: Record, proc: AgentProcess) -> None:
        role = proc.role
        cfg = self.config.agents[role]
        timeout = cfg.timeouts_s.get(cmd["action"], 600.0)
        proc.watchdog.beat()
        proc.watchdog.arm(timeout)
        release_at = self.clock() + RECEIPT_DELAY_S if self._receipts_held else None
        try:
            while True:
                wait = min(proc.watchdog.next_check_in(), 0.5)
                if release_at is not None:
                    if self.clock() >= release_at:
                        self.release_derived(force=True)
                        release_at = None
                    else:
                        wait = min(wait, max(release_at - self.clock(), 0.0))
                if self._events_waiting:
                    wait = min(wait, GROUP_COMMIT_S)
                item = self.inbox.get(timeout=max(wait, 0.001))
                if item is None and self._events_waiting:
                    self.sync()  # a quiet moment: make the events durable, show them
                if item is not None and self.handle(item, cmd, proc):
                    return
                if proc.watchdog.timed_out():
                    self.fail_attempt(
                        cmd, f"{cmd['action']} timed out after {timeout:g} s", "timeout"
                    )
                    self.restart(role, "timeout")
                    return
                if proc.watchdog.unhealthy():
                    misses = self.config.policy.heartbeat_misses
                    reason = (
                        f"no heartbeat from {role} for {misses} intervals of "
                        f"{proc.watchdog.interval:g} s"
                    )
                    self.fail_attempt(cmd, reason, "heartbeat_timeout")
                    self.restart(role, reason)
                    return
        finally:
            proc.watchdog.disarm()

    def handle(self, item: Incoming, cmd: Record, proc: AgentProcess) -> bool:
        """Act on one item from an agent; True when the command's attempt is over."""
        current = self.agents.get(item.role)
        if current is None or current.generation != item.generation:
            return False  # a predecessor's last words
        working = item.role == proc.role
        if item.message is None or not working:
            self.sync()  # what follows kills or records: the past must be durable first
        if item.eof:
            rc = self.kill_agent(item.role)
            self.system(
                "system.agent_exited",
                {"role": item.role, "pid": current.pid, "returncode": rc if rc is not None else -1},
            )
            if working:
                self.fail_attempt(
                    cmd,
                    f"agent {item.role} exited (code {rc})"
                    + (f": {current.last_stderr}" if current.last_stderr else ""),
                    "agent_exited",
                    kill=False,
                )
                self.restart(item.role, f"exited with code {rc}")
                return True
            return False
        if item.error is not None:
            err = item.error
            prefix = getattr(err, "prefix", b"")
            self.system(
                "system.protocol_error",
                {
                    "role": item.role,
                    "reason": str(err),
                    "size": item.raw_size,
                    "prefix": self.redactor.text(prefix.decode("utf-8", "replace")),
                },
                cmd["correlation_id"] if working else None,
            )
            if working:
                self.fail_attempt(cmd, f"protocol error: {err}", "protocol_error")
                self.restart(item.role, "protocol error")
                return True
            return False
        msg = item.message
        assert msg is not None
        if (
            not working
            or msg.get("correlation_id") != cmd["correlation_id"]
            or msg.get("task_id") != cmd["task_id"]
        ):
            self.system(
                "system.protocol_error",
                {
                    "role": item.role,
                    "reason": (
                        f"event {msg.get('event')} for task {msg.get('task_id')} / "
                        f"correlation {msg.get('correlation_id')}, expected "
                        f"{cmd['task_id']} / {cmd['correlation_id']}"
                    ),
                    "size": item.raw_size,
                    "prefix": self.redactor.text(
                        protocol.encode(msg)[:80].decode("utf-8", "replace")
                    ),
                },
                cmd["correlation_id"] if working else None,
            )
            if working:
                self.fail_attempt(cmd, "event for the wrong task or correlation", "protocol_error")
                self.restart(item.role, "protocol error")
                return True
            return False
        name = msg.get("event")
        if (
            name in protocol.TERMINAL_EVENTS
            and name != "error"
            and _planted.enabled("receipt_before_ledger")
            and self.state.pending is not None
            and self.state.snapshot_id
        ):
            early = Pending(
                self.state.pending.command, msg, [*self.state.pending.event_ids, msg["message_id"]]
            )
            if self.receipts is not None:
                self.receipts.write(early, self.state.snapshot_id)
        self.append(msg, trusted=True, sync=False)
        self._events_waiting = True
        if name == "error":
            self.sync()
            p = self.state.pending
            self.sleep(self.backoff.delay(p.attempt if p else 0))
            return True
        return name in protocol.TERMINAL_EVENTS

    def fail_attempt(
        self, cmd: Record, reason: str, code: str, *, role: str | None = None, kill: bool = True
    ) -> None:
        self.system(
            "system.command_failed",
            {
                "idempotency_key": cmd["idempotency_key"],
                "attempt": cmd["retry"]["attempt"],
                "reason": reason,
                "code": code,
            },
            cmd["correlation_id"],
        )
        if kill:
            self.kill_agent(role or cmd["to"]["agent_type"])

    def on_agent_gone(self, cmd: Record, proc: AgentProcess) -> None:
        rc = self.kill_agent(proc.role)
        self.fail_attempt(
            cmd, f"agent {proc.role} closed its input (code {rc})", "agent_exited", kill=False
        )
        self.restart(proc.role, "stdin closed")

    def restart(self, role: str, reason: str) -> None:
        n = self.state.restarts.get(role, 0)
        limit = self.config.policy.max_restarts
        if n >= limit:
            self.system(
                "system.run_failed",
                {"reason": f"agent {role} failed after {limit} restarts: {reason}"},
            )
            return
        delay = self.backoff.delay(n)
        self.system(
            "system.agent_restarted",
            {"role": role, "restarts": n + 1, "delay_s": round(delay, 3), "reason": reason},
        )
        self.sleep(delay)


# -- entry points ---------------------------------------------------------------


def _task(config: Config, task_id: str | None) -> dict[str, Any]:
    if task_id is None:
        if config.task is None:
            raise ConfigError(f"{config.path}: no task: pass --task ID or set $.task.id")
        return dict(config.task)
    if config.task is not None and config.task.get("id") == task_id:
        return dict(config.task)
    from lorch import schemas

    schemas.validate("config", {**config.raw, "task": {"id": task_id}}, source="--task")
    return {"id": task_id}


def _guard(runner: Runner, body: Callable[[], Outcome]) -> Outcome:
    try:
        return body()
    except KeyboardInterrupt:
        runner.stop_event.set()
        runner.stop_agents()
        with contextlib.suppress(LorchError, OSError):
            runner.write_derived()
        raise Interrupted(
            f"interrupted; agents stopped. Resume with: lorch resume --workspace "
            f"{runner.workspace} --run {runner.state.run_id}"
        ) from None
    except StorageError as e:
        # A full or failing disk mid-run: the ledger holds everything up to the
        # failed write (a torn line at most, which resume cuts).
        runner.stop_agents()
        if not runner.state.run_id:
            raise
        raise StorageError(
            f"{e}; the run is resumable: fix the disk, then lorch resume --workspace "
            f"{runner.workspace} --run {runner.state.run_id}"
        ) from None
    except BaseException:
        runner.stop_agents()
        raise
    finally:
        with contextlib.suppress(LorchError, OSError):
            runner.flush_derived()
        runner.derived.close()
        runner.inbox.close()
        if runner.ledger is not None:
            runner.ledger.close()


def run(workspace: Path, task_id: str | None = None, *, console: Console | None = None) -> Outcome:
    console = console or Console()
    workspace = workspace.resolve()
    ensure_dir(workspace)
    with workspace_lock(workspace):
        config, created = ensure(workspace)
        if created:
            console.say(
                f"[lorch] no lorch.json here: created {config.path} wired to the built-in "
                "mock agents (scenario happy-path)"
            )
        task = _task(config, task_id)
        for role, cfg in config.agents.items():
            resolve_argv(role, cfg.cmd, (workspace / cfg.cwd) if cfg.cwd else workspace)
        runner = Runner(workspace, config, console)
        run_id = new_run_id()

        def body() -> Outcome:
            runner.ledger, _ = ledger.Ledger.open(
                workspace / "events" / f"{run_id}.ndjson", fsync=config.policy.fsync
            )
            runner.start_run(run_id, task)
            runner.write_index()
            runner.take_snapshot()
            return runner.drive()

        return _guard(runner, body)


def find_unfinished(workspace: Path) -> str:
    events = workspace / "events"
    # Newest first: by the second in the run id, then by last write (two runs
    # started in the same second differ only in their random suffix).
    candidates = (
        sorted(
            events.glob("run-*.ndjson"),
            key=lambda p: (p.stem[:19], p.stat().st_mtime_ns),
            reverse=True,
        )
        if events.is_dir()
        else []
    )
    for path in candidates:
        s = State()
        for record in ledger.read(path, validate=False):
            s.fold(record)
        if not s.finished:
            return path.stem
    if candidates:
        # Nothing unfinished: the newest run, so resume reports it (and rebuilds
        # its derived files, in case a crash came after its last record).
        return candidates[0].stem
    raise UsageError(f"{workspace}: no runs in this workspace")


def resume(
    workspace: Path, run_id: str | None = None, *, console: Console | None = None
) -> Outcome:
    console = console or Console()
    workspace = workspace.resolve()
    if not workspace.is_dir():
        raise UsageError(f"{workspace}: no such workspace")
    with workspace_lock(workspace):
        config = load(workspace)
        run_id = run_id or find_unfinished(workspace)
        path = workspace / "events" / f"{run_id}.ndjson"
        if not path.exists():
            raise UsageError(f"{workspace}: no run {run_id} (no {path.relative_to(workspace)})")
        runner = Runner(workspace, config, console)

        def body() -> Outcome:
            if _planted.enabled("no_torn_cut"):
                torn = None
                fd = os.open(path, os.O_WRONLY | os.O_APPEND)
                runner.ledger = ledger.Ledger(
                    path, fd, ledger.scan(path).records, fsync=config.policy.fsync
                )
            else:
                runner.ledger, torn = ledger.Ledger.open(path, fsync=config.policy.fsync)
            state = runner.state
            for record in ledger.read(path):
                state.fold(record)
                if record.get("event") == "system.run_started":
                    runner.receipts = ReceiptWriter(workspace, state.run_id, state.task_id)
                    state.on_accept = runner._on_accept
            if not state.run_id:
                # The crash came before record 1 was durable: start the run afresh.
                state.run_id = run_id
                runner.start_run(run_id, _task(config, None))
            if torn is not None:
                console.say(
                    f"[lorch] cut a torn last line ({torn.size} bytes) from {path.name}: "
                    f"{torn.reason}"
                )
            if state.finished:
                runner.write_derived()
                console.say(
                    f"[lorch] run {run_id} already {state.status}"
                    + (f": {state.failure}" if state.failure else "")
                )
                return Outcome(run_id, state.status, state.failure or "")
            killed = []
            if not _planted.enabled("no_orphan_kill"):
                for _role, info in sorted(state.agents.items()):
                    if kill_orphan(int(info["pid"]), int(info["pgid"])):
                        killed.append(int(info["pid"]))
            if state.snapshot_id is None:
                runner.take_snapshot()
            runner.system(
                "system.resumed",
                {
                    "torn_tail": None if torn is None else {"line": torn.line, "size": torn.size},
                    "orphans_killed": killed,
                },
            )
            runner.write_index()
            return runner.drive()

        return _guard(runner, body)


__all__ = ["Console", "Interrupted", "Outcome", "StorageError", "resume", "run"]
