"""The write-ahead record of a run: the ledger, its fold, and the files derived from it.

:class:`Recorder` is the part of the engine that writes: every record is
validated, appended to the ledger, folded into the workflow state, and shown on
the live transcript once it is durable (DESIGN.md §5.1, docs/decisions.md D16).
Accepted answers get their receipts, and the derived files are kept up to
date, through ``lorch/derived.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from lorch import ledger, protocol, snapshot
from lorch.derived import Derived
from lorch.intake import INTAKE_TASK
from lorch.policy import RunPolicy
from lorch.protocol import Record
from lorch.workflow import State


class Sink(Protocol):
    """Where the live transcript goes."""

    def say(self, text: str) -> None: ...

    def record(self, record: Record) -> None: ...


class Recorder:
    def __init__(self, workspace: Path, console: Sink, clock: Callable[[], float]) -> None:
        self.workspace = workspace
        self.console = console
        self.clock = clock
        self.state = State()
        self.ledger: ledger.Ledger | None = None
        self.derived = Derived(workspace, clock)
        self._unshown: list[Record] = []
        self._events_waiting = False  # agents' events appended, not yet synced

    @property
    def policy(self) -> RunPolicy:
        """The run's limits, as its ledger records them."""
        return self.state.policy

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
        self._fold(record)
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
                "message_id": protocol.new_message_id("evt"),
                "correlation_id": correlation_id or self.state.run_id,
                "task_id": self.state.task_id,
                "from": {"agent_type": "system"},
                "event": name,
                "payload": payload,
                "occurred_at": protocol.now_rfc3339(),
            },
            sync=sync,
        )

    def start_run(
        self, run_id: str, task: Record | None, policy: RunPolicy, config: Record
    ) -> None:
        """Record 1 of every ledger: the run, its task and the policy it runs under.

        ``config``: what identifies the configuration it started from
        (``config_digest`` and ``config_parts``, see ``lorch/drift.py``). With no
        task the run starts with intake (docs/intake.md).
        """
        started: Record = {"task": task} if task is not None else {"task": {"id": INTAKE_TASK}}
        if task is None:
            started["intake"] = True
        self.state.task = started["task"]
        self.system(
            "system.run_started",
            {"run_id": run_id, **started, "policy": policy.as_record(), **config},
            run_id,
        )

    def replay(self, path: Path) -> None:
        """Fold a recorded ledger (resume)."""
        for record in ledger.read(path):
            self._fold(record)

    def _fold(self, record: Record) -> None:
        """Fold one record; an answer it accepts gets its receipt (once durable)."""
        accepted = self.state.accepted
        self.state.fold(record)
        if record.get("event") == "system.run_started":
            self.derived.start(self.state.run_id, self.state.task_id)
        if self.state.accepted != accepted:
            self._accepted()

    def _accepted(self) -> None:
        # Held in memory until the answer is durable and lorch is waiting.
        assert self.state.last_accepted is not None
        self.derived.accepted(self.state.last_accepted, self.state.snapshot_id)

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

    # -- derived files --------------------------------------------------------

    def write_index(self) -> None:
        self.derived.write_index(self.state)

    def flush_derived(self) -> None:
        """Make the ledger durable, then write every held or queued derived file."""
        self.sync()
        self.derived.flush()

    def write_derived(self) -> None:
        self.sync()
        self.derived.rebuild(self.state)

    def close(self) -> None:
        self.derived.close()
        if self.ledger is not None:
            self.ledger.close()
