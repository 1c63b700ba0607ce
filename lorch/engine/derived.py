"""Files derived from the ledger: receipts, ``state/run.json``, the index, the transcript.

They are caches of the ledger (DESIGN.md §5.2): each is a projection of the
folded workflow state (the pure functions :func:`run_state` and
:func:`index_entry`, and :class:`ReceiptWriter`'s receipts), written only once
the ledger records it derives from are durable, and rebuilt by resume when a
crash lost it. Writes go through :class:`DerivedWriter`, a background thread,
so lorch never waits for them on the path from an answer to the next command.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

from lorch.core.state import Pending, State
from lorch.engine import transcript
from lorch.store import derived_files as store
from lorch.store import layout
from lorch.wire import protocol
from lorch.wire.protocol import Record

# While a run goes on, state/run.json may lag the ledger by at most this long.
STATE_REFRESH_S = 1.0
# Receipts are written in batches of this many while agents answer fast, and all
# at once when an agent has been working for RECEIPT_DELAY_S (or the run ends).
RECEIPT_BATCH = 16
RECEIPT_DELAY_S = 0.1

STAGES = {
    "implement": "implement",
    "implement_changes": "implement",
    "review": "review",
    "update_spec": "spec",
}


def stage(state: State) -> str:
    if state.finished:
        return "done"
    p = state.pending
    action = p.command["action"] if p else state.last_action
    if state.intake.active and state.queue is None:
        return "intake"
    return STAGES.get(str(action), "starting")


def run_state(state: State, now: str) -> Record:
    """The body of ``state/run.json`` for ``state`` (a pure projection)."""
    p = state.pending
    return {
        "run_id": state.run_id,
        "task_id": state.task_id,
        "status": state.status,
        "stage": stage(state),
        "review_round": state.rounds.get("review", 0),
        "spec_round": state.rounds.get("update_spec", 0),
        "snapshot_id": state.snapshot_id,
        "started_at": state.started_at or now,
        "updated_at": now,
        "ledger_records": state.records,
        "pending": None
        if p is None
        else {
            "idempotency_key": p.ik,
            "correlation_id": p.command["correlation_id"],
            "action": p.command["action"],
            "agent_type": p.role,
            "attempt": p.attempt,
        },
        "agents": {role: dict(v) for role, v in state.agents.items()},
        "failure": state.failure,
    }


def index_entry(state: State, now: str) -> Record:
    """This run's entry in ``state/index.json`` (a pure projection)."""
    return {
        "run_id": state.run_id,
        "task_id": state.task_id,
        "status": state.status,
        "snapshot_id": state.snapshot_id,
        "started_at": state.started_at or now,
        "updated_at": now,
        "ledger": layout.ledger_rel(state.run_id),
        "failure": state.failure,
    }


def receipt(run_id: str, pending: Pending, snapshot_id: str) -> Record | None:
    """The receipt of an accepted command (None if it has no terminal answer)."""
    if pending.terminal is None:
        return None
    cmd, ev = pending.command, pending.terminal
    body: Record = {
        "run_id": run_id,
        "task_id": cmd["task_id"],
        "action": cmd["action"],
        "agent_type": cmd["to"]["agent_type"],
        "idempotency_key": pending.ik,
        "correlation_id": cmd["correlation_id"],
        "command_message_id": cmd["message_id"],
        "snapshot_id": snapshot_id,
        "terminal_event": ev["event"],
        "event_ids": list(pending.event_ids),
        "artifacts": list(ev.get("artifacts") or []),
        "completed_at": ev.get("occurred_at") or protocol.now_rfc3339(),
    }
    if "status" in ev:
        body["status"] = ev["status"]
    if pending.pre is not None and pending.post is not None:
        body["checkpoint"] = {"pre": pending.pre, "post": pending.post}
    return body


def _step_of(path: Path) -> int:
    return int(path.stem.split("-")[1])


class ReceiptWriter:
    """Writes one receipt per accepted command, never twice for the same key."""

    def __init__(self, workspace: Path, run_id: str, task_id: str | None = None) -> None:
        self.workspace = workspace
        self.run_id = run_id
        # Every task's: a run after intake has several (receipts/<task>/ each).
        existing = store.iter_receipts(workspace)
        # Only the receipts found on disk at start: a live run accepts each key
        # once, so this need not grow (memory stays flat over long runs).
        self.steps: dict[str, int] = {
            str(data.get("idempotency_key")): _step_of(path)
            for path, data in existing
            if data.get("run_id") == run_id
        }
        # Per task (receipts/<task>/ each): numbers taken below the next free
        # one, the next free one (found on first use), and the step of the
        # task's last accepted command in ledger order.
        self.taken: dict[str, set[int]] = {}
        for path, _ in existing:
            self.taken.setdefault(path.parent.name, set()).add(_step_of(path))
        self.next: dict[str, int] = {}
        self.last: dict[str, int] = {}
        if task_id is not None:
            self.next[task_id] = store.next_receipt_number(workspace, task_id)

    @property
    def done(self) -> set[str]:
        return set(self.steps)

    def write(self, pending: Pending, snapshot_id: str) -> None:
        self.write_batch([(pending, snapshot_id)])

    def write_batch(self, batch: list[tuple[Pending, str]]) -> None:
        """Receipts for several accepted commands, written together.

        A receipt that is missing between two that exist (someone deleted it)
        is rebuilt under its own step number, the one after its predecessor's,
        when that number is free: the receipts keep the ledger's order.
        """
        receipts: dict[str, list[Record]] = {}
        for p, snap in batch:
            task = str(p.command["task_id"])
            if p.ik in self.steps:
                self.last[task] = self.steps[p.ik]
                continue
            r = receipt(self.run_id, p, snap)
            if r is None:
                continue
            gap = self.last.get(task, 0) + 1
            if gap < self._next(task) and gap not in self.taken.get(task, set()):
                self._flush(task, receipts.pop(task, []))
                self._flush(task, [r], start=gap)
            else:
                receipts.setdefault(task, []).append(r)
        for task, rs in receipts.items():
            self._flush(task, rs)

    def _next(self, task: str) -> int:
        if task not in self.next:
            self.next[task] = store.next_receipt_number(self.workspace, task)
        return self.next[task]

    def _flush(self, task: str, receipts: list[Record], start: int | None = None) -> None:
        if not receipts:
            return
        written = store.write_receipts(self.workspace, receipts, start=start or self._next(task))
        if start is not None:  # a gap filled (rare): the only numbers below next to note
            self.taken.setdefault(task, set()).update(step for _, step in written)
        if written:
            self.last[task] = max(step for _, step in written)
            self.next[task] = max(self._next(task), self.last[task] + 1)


class DerivedWriter:
    """Writes derived files (receipts, run.json) in order, off the critical path.

    Each write is queued only once the ledger records it derives from are
    durable, and a crash that loses a queued write is repaired by resume, which
    rebuilds what is missing. So lorch need not wait for these writes before it
    sends the next command; it waits for them (``flush``) before it records the
    end of a run and before it exits. Writes are held (``submit``) until lorch
    has sent its next command (``release``), so their fsyncs do not queue up in
    the file system's journal in front of the command's own fsync. A failed
    write is raised at the next ``submit``, ``release`` or ``flush``.
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


class Derived:
    """What the engine keeps derived: when to write each file, and its writer.

    Every method assumes the ledger records it reads through ``state`` are
    durable (the engine syncs first).
    """

    def __init__(self, workspace: Path, clock: Callable[[], float]) -> None:
        self.workspace = workspace
        self.clock = clock
        self.writer = DerivedWriter()
        self.receipts: ReceiptWriter | None = None
        self.held: list[tuple[Pending, str]] = []
        self._state_key: tuple[object, ...] | None = None
        self._state_at: float | None = None

    def start(self, run_id: str, task_id: str) -> None:
        self.receipts = ReceiptWriter(self.workspace, run_id, task_id)

    def accepted(self, pending: Pending, snapshot_id: str | None) -> None:
        """Hold the receipt of an accepted command until its answer is durable."""
        if self.receipts is not None and snapshot_id:
            self.held.append((pending, snapshot_id))

    def release(self, *, force: bool = False) -> None:
        """Hand held writes to the background writer.

        Receipts go in batches of ``RECEIPT_BATCH`` while agents answer fast,
        so a long loop costs a few syncs per batch, not two per command; when an
        agent takes a while (``RECEIPT_DELAY_S``) or the run ends, they all go.
        """
        if not force and len(self.held) < RECEIPT_BATCH:
            return
        receipts, batch = self.receipts, self.held
        self.held = []
        if receipts is not None and batch:
            self.writer.submit(lambda: receipts.write_batch(batch))
        self.writer.release()

    def write_state(self, state: State, *, force: bool = True) -> None:
        """Rewrite ``state/run.json``.

        While a run goes on (``force=False``) it is rewritten only when the run's
        status, phase or agents change, or when the last write is
        ``STATE_REFRESH_S`` old: a review loop then costs no run.json write per
        command (docs/decisions.md, D13). Resume and the end of a run always write it.
        """
        if not state.run_id:
            return
        key = (state.status, stage(state) == "spec", repr(state.agents), repr(state.restarts))
        t = self.clock()
        if (
            not force
            and key == self._state_key
            and self._state_at is not None
            and t - self._state_at < STATE_REFRESH_S
        ):
            return
        self._state_key, self._state_at = key, t
        body = run_state(state, protocol.now_rfc3339())
        self.writer.submit(lambda: store.write_run_state(self.workspace, body))

    def write_index(self, state: State) -> None:
        store.update_index(self.workspace, index_entry(state, protocol.now_rfc3339()))

    def flush(self) -> None:
        """Write every held or queued derived file now."""
        self.release(force=True)
        self.writer.flush()

    def rebuild(self, state: State) -> None:
        """Every derived file, brought up to date with ``state`` (resume, end of a run)."""
        self.write_state(state)
        self.flush()
        self.write_index(state)
        transcript.rebuild(self.workspace, state.run_id)

    def close(self) -> None:
        self.writer.close()
