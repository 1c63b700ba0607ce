"""The write-ahead record of a run: the ledger, its fold, and the files derived from it.

:class:`Recorder` is the part of the engine that writes: every record is
validated, appended to the ledger, folded into the workflow state, and shown on
the live transcript once it is durable (DESIGN.md §5.1, docs/decisions.md D16).
Accepted answers get their receipts, and the derived files are kept up to
date, through ``lorch/engine/derived.py``.

**Verdicts are captured.** The moment a reviewer's or spec maintainer's
terminal event is recorded — the end of its turn — lorch reads its verdict file
(``reviews/<task>.json``, ``spec_notes/<task>.json``) and records its bytes and
digest in a ``system.verdict`` record. The workflow decides from those bytes
(``lorch/core/build_loop.py``); a later change to the file counts for nothing, and
when the run ends lorch records it (``system.verdict_changed``: the transcript
says it, ``lorch verify`` reports it).
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from lorch.agents.acp import prompts
from lorch.core.intake import INTAKE_TASK
from lorch.core.policy import RunPolicy
from lorch.core.state import ENDS, VERDICT_EVENTS, Pending, State
from lorch.engine.derived import Derived
from lorch.store import ledger, snapshot
from lorch.store.paths import safe_relpath
from lorch.wire import protocol
from lorch.wire.checksum import sha256_bytes
from lorch.wire.errors import PathEscape
from lorch.wire.protocol import Record
from lorch.wire.redact import Redactor

# A verdict file's bytes go into the ledger up to this size; a larger file is
# recorded by its digest alone (and is no verdict the workflow can read).
VERDICT_TEXT_LIMIT = 64 * 1024


class Sink(Protocol):
    """Where the live transcript goes."""

    def say(self, text: str) -> None: ...

    def record(self, record: Record) -> None: ...


class Recorder:
    """Writes one run's records to its ledger, opened before (``Ledger.open``)."""

    def __init__(
        self,
        workspace: Path,
        log: ledger.Ledger,
        console: Sink,
        redactor: Redactor,
        clock: Callable[[], float],
    ) -> None:
        self.workspace = workspace
        self.ledger = log
        self.console = console
        self.redactor = redactor
        self.clock = clock
        self.state = State()
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
        if record.get("event") in ENDS:
            self._verdicts_changed()
        if not trusted:
            protocol.validate_message(record, source=f"ledger record {self.ledger.records + 1}")
        self.ledger.append(record, sync=sync, line=line)
        self._fold(record)
        self._unshown.append(record)
        if show:
            self.show_if_durable()
        p = self.state.pending
        if p is not None and p.terminal is record and record.get("event") in VERDICT_EVENTS:
            self.capture_verdict(p, sync=sync)

    # -- verdicts -------------------------------------------------------------

    def capture_verdict(self, p: Pending, *, sync: bool = True) -> None:
        """Record the bytes of ``p``'s verdict file now: the end of its role's turn."""
        rel = prompts.verdict_path(str(p.command["action"]), str(p.command["task_id"]))
        if rel is None:
            return
        payload: Record = {"idempotency_key": p.ik, "role": p.role, "path": rel}
        payload.update(read_verdict_file(self.workspace, rel))
        self.system("system.verdict", payload, p.command["correlation_id"], sync=sync)

    def _verdicts_changed(self) -> None:
        """Before the run's end: record each verdict file that changed since its capture."""
        for rel, captured in sorted(self.state.verdicts.items()):
            now = fingerprint(read_verdict_file(self.workspace, rel))
            if now == fingerprint(captured):
                continue
            self.system(
                "system.verdict_changed",
                {
                    "path": rel,
                    "idempotency_key": captured.get("idempotency_key"),
                    "captured": fingerprint(captured),
                    "now": now,
                },
            )

    @property
    def events_waiting(self) -> bool:
        """Agents' events appended and not yet synced (the next quiet moment syncs them)."""
        return self._events_waiting

    def events_appended(self) -> None:
        """Records were appended unsynced for the next quiet moment (group commit)."""
        self._events_waiting = True

    def sync(self) -> None:
        """Make every appended record durable, then show the ones not shown yet."""
        self.ledger.sync()
        self._events_waiting = False
        self._show()

    def show_if_durable(self) -> None:
        if not self.ledger.unsynced:
            self._show()

    def _show(self) -> None:
        for record in self._unshown:
            self.console.record(record)
        self._unshown.clear()

    def system(
        self,
        name: str,
        payload: Record,
        correlation_id: str | None = None,
        *,
        sync: bool = True,
        task_id: str | None = None,
        status: str | None = None,
    ) -> None:
        """A record of lorch's own: the one builder of every ``system.*`` event.

        What it quotes (an agent's reasons and stderr, a user's answers) is
        redacted here, whoever asks for the record.
        """
        self.append(
            system_event(
                name,
                self.redactor.value(payload),
                correlation_id or self.state.run_id,
                task_id or self.state.task_id,
                status,
            ),
            sync=sync,
        )

    def start_run(
        self, run_id: str, task: Record | None, policy: RunPolicy, config: Record
    ) -> None:
        """Record 1 of every ledger: the run, its task and the policy it runs under.

        ``config``: what identifies the configuration it started from
        (``config_digest`` and ``config_parts``, see ``lorch/app/drift.py``). With no
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
            self.accepted()

    def accepted(self) -> None:
        # Held in memory until the answer is durable and lorch is waiting.
        assert self.state.last_accepted is not None
        self.derived.accepted(self.state.last_accepted, self.state.snapshot_id)

    def missing_capture(self) -> Pending | None:
        """The answer in flight whose verdict was never captured (a crash came between)."""
        p = self.state.pending
        if p is None or p.terminal is None or p.verdict is not None:
            return None
        return p if p.terminal.get("event") in VERDICT_EVENTS else None

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
        self._note_head()
        self.derived.flush()

    def write_derived(self) -> None:
        self.sync()
        self._note_head()
        self.derived.rebuild(self.state)

    def _note_head(self) -> None:
        # How far the ledger reached: a ledger later found shorter was cut (ledger.check_head).
        if self.ledger.records:
            self.ledger.note_head()

    def close(self) -> None:
        self.derived.close()
        self.ledger.close()


def read_verdict_file(workspace: Path, rel: str) -> Record:
    """What ``system.verdict`` records of a verdict file: digest, size, text (or why not).

    Never follows a symlink, never opens anything but a regular file (a FIFO
    would block lorch).
    """
    try:
        full = safe_relpath(workspace, rel)
        fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return {"missing": True}
    except (OSError, PathEscape) as e:
        return {"problem": f"cannot open it: {getattr(e, 'strerror', None) or e}"}
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return {"problem": "not a regular file"}
        chunks, size = [], 0
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > 1 << 24:
                return {"problem": "larger than 16 MiB"}
    except OSError as e:
        return {"problem": f"cannot read it: {e.strerror}"}
    finally:
        os.close(fd)
    data = b"".join(chunks)
    out: Record = {"sha256": sha256_bytes(data), "size": len(data)}
    if len(data) <= VERDICT_TEXT_LIMIT:
        with contextlib.suppress(UnicodeDecodeError):
            text = data.decode("utf-8")
            # Control characters are escaped six bytes to one: keep the record's line short.
            if len(json.dumps(text, ensure_ascii=False)) <= 2 * VERDICT_TEXT_LIMIT:
                out["text"] = text
    return out


def fingerprint(found: Record) -> str:
    """What a verdict file's state is compared by: its digest, or why it has none."""
    return str(found.get("sha256") or found.get("problem") or "missing")


def system_event(
    name: str, payload: Record, correlation_id: str, task_id: str, status: str | None = None
) -> Record:
    """The shape of a ``system.*`` record (redact ``payload`` first: :meth:`Recorder.system`)."""
    record: Record = {
        "kind": "event",
        "message_id": protocol.new_message_id("evt"),
        "correlation_id": correlation_id,
        "task_id": task_id,
        "from": {"agent_type": "system"},
        "event": name,
        "payload": payload,
        "occurred_at": protocol.now_rfc3339(),
    }
    if status is not None:
        record["status"] = status
    return record
