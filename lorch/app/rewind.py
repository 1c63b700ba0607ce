"""``lorch rewind``: put the workspace back to a checkpoint of a finished run.

Every turn of a role lorch makes exactly-once (every ACP role; NDJSON roles
with ``"idempotency": "lorch"``) has a checkpoint before it and one after it in
the private store (``lorch/store/checkpoint.py``), recorded in the ledger as
``system.checkpoint`` (phase ``pre``/``post``). A **step** is one command, named
by its correlation id (``lorch status --run ID`` lists them): its attempts
share it, and it names the task.

A rewind, under the workspace lock (``lorch/store/wslock.py``: refused while a run
is active), in this order:

1. checkpoint the workspace as it is (``saved``), so that ``--undo`` can bring
   it back;
2. note in ``state/rewind.json`` which ledger record the rewind will be
   (``done: false``), then append that record, ``system.rewind`` (step, phase,
   target tree, saved tree, the paths that differ), to the run's ledger
   through lorch's ledger writer (``Recorder``): write-ahead, before any file
   moves;
3. restore the target (``Checkpoints.rollback``, crash-safe by itself), with
   the saved checkpoint's ignore rules protecting what they ignore as well as
   the target's: a file ignored now is never deleted;
4. mark ``state/rewind.json`` done.

A kill anywhere in this: the next ``lorch rewind`` finds the note not done.
If its record is in the ledger, it restores that record's target again (the
restore judges a half-moved workspace by the same rules and finishes it) and
marks it done; a rewind asking for the same thing is then complete, with one
record. If the record never reached the ledger nothing was moved, and the
rewind starts afresh. ``--undo`` is a rewind to the ``saved`` checkpoint of
the last rewind not undone yet (itself recorded, with the record it undoes):
``--undo`` again undoes the rewind before that one.

Only finished runs are rewound: a run that can still be resumed would go on
from a ledger that says its steps' files are there (docs/rewind.md).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorch.core.state import State
from lorch.engine import transcript
from lorch.engine.recorder import Recorder
from lorch.engine.turn_checkpoints import LISTED
from lorch.store import layout, ledger
from lorch.store.atomic import atomic_write_json
from lorch.store.checkpoint import STORE, Checkpoints
from lorch.store.wslock import workspace_lock
from lorch.wire.errors import LorchError, StorageError, UsageError
from lorch.wire.protocol import Record
from lorch.wire.redact import Redactor, secret_values

MARKER = Path("state") / "rewind.json"
EVENT = "system.rewind"

Say = Callable[[str], None]


@dataclass(frozen=True)
class Step:
    """One command of a run whose turn lorch checkpointed."""

    step: str  # the command's correlation id
    action: str
    role: str
    task_id: str
    ik: str
    pre: str
    post: str | None  # None: the turn never ended with an answer
    changed: tuple[str, ...]  # what the ledger lists (the first LISTED paths)
    changed_count: int


@dataclass(frozen=True)
class Rewound:
    """A rewind as its ledger record says (``record``: its number in the run's ledger)."""

    run_id: str
    record: int
    payload: Record

    @property
    def undo(self) -> bool:
        return self.payload.get("undo") is True


@dataclass(frozen=True)
class Outcome:
    rewind: Rewound | None  # None: the workspace already was the target
    tree: str
    restored: list[str]  # paths rewritten, created or removed
    unheld: list[str]  # paths no checkpoint holds (left as they are)
    finished_interrupted: bool = False


class _Quiet:
    """The recorder's console: ``lorch rewind`` says what it did itself."""

    def say(self, text: str) -> None:
        pass

    def record(self, record: Record) -> None:
        pass


def ledger_path(workspace: Path, run_id: str) -> Path:
    path = layout.ledger(workspace, run_id)
    if "/" in run_id or not path.is_file():
        raise UsageError(f"{workspace}: no run {run_id} (no events/{run_id}.ndjson)")
    return path


def steps(records: Iterable[Record]) -> tuple[State, list[Step]]:
    """The run's state and its checkpointed steps, in the order they were sent."""
    state = State()
    pre: dict[str, str] = {}
    post: dict[str, Record] = {}
    first: dict[str, Record] = {}
    for record in records:
        state.fold(record)
        if record.get("kind") == "command":
            ik = str(record.get("idempotency_key"))
            if ik in pre:
                first.setdefault(ik, record)
            continue
        if record.get("event") != "system.checkpoint":
            continue
        payload = record.get("payload")
        if not isinstance(payload, dict):
            continue
        ik = str(payload.get("idempotency_key"))
        if payload.get("phase") == "pre":
            pre.setdefault(ik, str(payload.get("tree")))
        elif payload.get("phase") == "post":
            post[ik] = payload
    found = []
    for ik, command in first.items():
        after = post.get(ik, {})
        changed = after.get("changed")
        found.append(
            Step(
                step=str(command.get("correlation_id")),
                action=str(command.get("action")),
                role=str(command.get("to", {}).get("agent_type")),
                task_id=str(command.get("task_id")),
                ik=ik,
                pre=pre[ik],
                post=str(after["tree"]) if after.get("tree") else None,
                changed=tuple(str(p) for p in changed) if isinstance(changed, list) else (),
                changed_count=int(after.get("changed_count") or 0),
            )
        )
    return state, found


def rewinds(records: Iterable[Record], run_id: str) -> list[Rewound]:
    """The ``system.rewind`` records of a run's ledger."""
    return [
        Rewound(run_id, n, record["payload"])
        for n, record in enumerate(records, start=1)
        if record.get("event") == EVENT
        and record.get("from", {}).get("agent_type") == "system"
        and isinstance(record.get("payload"), dict)
    ]


def run_steps(workspace: Path, run_id: str) -> tuple[State, list[Step]]:
    return steps(ledger.read(ledger_path(workspace, run_id)))


def turn_files(workspace: Path, step: Step) -> list[str] | None:
    """Every path the step's turn changed, from the checkpoint store (None: it cannot tell)."""
    if step.post is None or not (workspace / STORE).is_dir():
        return None  # (and a status never makes a store)
    ck = Checkpoints(workspace, workspace.absolute() / STORE, watch=False)
    try:
        return ck.changed(step.pre, step.post)
    except StorageError:
        return None
    finally:
        ck.close()


def rewind(
    workspace: Path, run_id: str, to: str, *, after: bool = False, say: Say | None = None
) -> Outcome:
    """Restore the checkpoint before (``after``: after) step ``to`` of finished run ``run_id``."""
    phase = "post" if after else "pre"

    def target() -> tuple[str, str, Record]:
        state, found = run_steps(workspace, run_id)
        if not state.finished:
            raise UsageError(
                f"{workspace}: run {run_id} is unfinished ({state.status}): lorch rewinds only "
                f"a finished run; finish it first (`lorch resume --run {run_id}`)"
            )
        match = [s for s in found if s.step == to]
        if not match:
            listed = ", ".join(s.step for s in found) or "none"
            raise UsageError(
                f"{workspace}: run {run_id} has no step {to!r} with a checkpoint "
                f"(steps: {listed}; `lorch status --run {run_id}` lists them)"
            )
        step = match[0]
        tree = step.post if after else step.pre
        if tree is None:
            raise UsageError(
                f"{workspace}: step {to} of run {run_id} has no checkpoint after its turn "
                "(the turn never ended with an answer); rewind to before it instead"
            )
        return run_id, tree, {"step": to, "phase": phase}

    def same(done: Rewound) -> bool:
        asked = (run_id, to, phase)
        return not done.undo and (done.run_id, done.payload["step"], done.payload["phase"]) == asked

    return _perform(workspace, target, same, say)


def undo(workspace: Path, *, say: Say | None = None) -> Outcome:
    """Restore the workspace as the last rewind not undone yet found it."""

    def target() -> tuple[str, str, Record]:
        last = to_undo(workspace)
        if last is None:
            raise UsageError(f"{workspace}: no rewind to undo (`lorch rewind` records each one)")
        p = last.payload
        return (
            last.run_id,
            str(p["saved"]),
            {"step": p["step"], "phase": p["phase"], "undo": True, "undoes": last.record},
        )

    return _perform(workspace, target, lambda done: done.undo, say)


def to_undo(workspace: Path) -> Rewound | None:
    """The rewind ``--undo`` undoes: the last one, across runs, not undone yet
    (``--undo`` again then undoes the one before it)."""
    stack = _stack(workspace)
    return stack[-1] if stack else None


def _stack(workspace: Path) -> list[Rewound]:
    """The rewinds in effect, oldest first: every one recorded, less those undone."""
    found: list[tuple[str, Rewound]] = []
    for path in sorted(layout.runs(workspace)):
        records = list(ledger.read(path))
        for r in rewinds(records, path.stem):
            found.append((str(records[r.record - 1].get("occurred_at", "")), r))
    found.sort(key=lambda f: f[0])
    stack: list[Rewound] = []
    for _, r in found:
        if r.undo:
            gone = (r.run_id, r.payload.get("undoes"))
            stack = [s for s in stack if (s.run_id, s.record) != gone]
        else:
            stack.append(r)
    return stack


def rewound_note(workspace: Path, run_id: str) -> str | None:
    """What ``lorch verify`` adds when the run's files were rewound after it (and not undone).

    None too when a ledger of the workspace cannot be read: verify reports a
    damaged ledger through its own rules, and a note must not hide that.
    """
    try:
        stack = _stack(workspace)
    except LorchError:
        return None
    left = [r for r in stack if r.run_id == run_id]
    if not left:
        return None
    return (
        f"the workspace was rewound after the run (lorch rewind, ledger record {left[-1].record}): "
        "its files are not the run's result; `lorch rewind --undo` brings them back"
    )


# -- the rewind itself --------------------------------------------------------------


def _perform(
    workspace: Path,
    target: Callable[[], tuple[str, str, Record]],
    same: Callable[[Rewound], bool],
    say: Say | None,
) -> Outcome:
    workspace = workspace.absolute()  # git runs in scratch directories too
    with workspace_lock(workspace, say):
        ck = Checkpoints(workspace, workspace / STORE, watch=False)
        try:
            finished = _finish_interrupted(workspace, ck)
            if finished is not None and same(finished[0]):
                done, restored = finished
                return Outcome(done, str(done.payload["tree"]), restored, ck.unheld(), True)
            run_id, tree, fields = target()
            saved = ck.take()
            if saved == tree:
                return Outcome(None, tree, [], ck.unheld(), finished is not None)
            changed = ck.changed(saved, tree)
            payload: Record = {
                **fields,
                "tree": tree,
                "saved": saved,
                "changed": changed[:LISTED],
                "changed_count": len(changed),
            }
            done = _record(workspace, run_id, payload)
            restored = ck.rollback(tree, spare=saved)
            _write_marker(workspace, done, finished=True)
            return Outcome(done, tree, restored, ck.unheld(), finished is not None)
        finally:
            ck.close()


def _record(workspace: Path, run_id: str, payload: Record) -> Rewound:
    """Append the rewind to the run's ledger, noted first in state/rewind.json."""
    path = ledger_path(workspace, run_id)
    # The record names paths and trees only; the environment's secrets are
    # redacted from it anyway, as from every record lorch writes.
    log, _ = ledger.Ledger.open(path, create=False)
    rec = Recorder(
        workspace, log, _Quiet(), Redactor(secret_values(dict(os.environ))), time.monotonic
    )
    try:
        rec.replay(path)
        n = rec.ledger.records + 1
        done = Rewound(run_id, n, payload)
        _write_marker(workspace, done, finished=False)
        rec.system(EVENT, payload, run_id)
        rec.ledger.note_head()
    finally:
        rec.close()
    transcript.rebuild(workspace, run_id)
    return done


def _finish_interrupted(workspace: Path, ck: Checkpoints) -> tuple[Rewound, list[str]] | None:
    """Finish a rewind a kill cut short; None if there was none (or it never began)."""
    noted = _read_marker(workspace)
    if noted is None or noted.get("done") is not False:
        return None
    found = _recorded(workspace, str(noted["run_id"]), int(noted["record"]))
    if found is None:
        # Killed before its record reached the ledger (or a note that is not
        # the ledger's last record, which no kill leaves): nothing was moved.
        (workspace / MARKER).unlink(missing_ok=True)
        return None
    restored = ck.rollback(str(found.payload["tree"]), spare=str(found.payload["saved"]))
    transcript.rebuild(workspace, found.run_id)  # the kill may have come before it
    _write_marker(workspace, found, finished=True)
    return found, restored


def _recorded(workspace: Path, run_id: str, n: int) -> Rewound | None:
    """Record ``n`` of the run's ledger if it is a rewind and the ledger's last record."""
    path = layout.ledger(workspace, run_id)
    if "/" in run_id or not path.is_file():
        return None
    records = list(ledger.read(path))
    found = rewinds(records[n - 1 :], run_id) if len(records) == n else []
    return Rewound(run_id, n, found[0].payload) if found else None


def _read_marker(workspace: Path) -> dict[str, Any] | None:
    """``state/rewind.json`` if it is one lorch wrote (a pointer only: the ledger decides)."""
    try:
        data = json.loads((workspace / MARKER).read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise StorageError(f"{workspace / MARKER}: unreadable ({e}); remove it") from None
    ok = (
        isinstance(data, dict)
        and isinstance(data.get("run_id"), str)
        and isinstance(data.get("record"), int)
        and isinstance(data.get("done"), bool)
    )
    if not ok:
        raise StorageError(
            f"{workspace / MARKER}: not a rewind note (run_id, record, done expected); remove it"
        )
    return dict(data)


def _write_marker(workspace: Path, done: Rewound, *, finished: bool) -> None:
    atomic_write_json(
        workspace / MARKER, {"run_id": done.run_id, "record": done.record, "done": finished}
    )


# -- what the CLI shows ---------------------------------------------------------------


def status_lines(workspace: Path, run_id: str) -> list[str]:
    """``lorch status --run ID``'s list of the steps a rewind can go to."""
    state, found = run_steps(workspace, run_id)
    if not found:
        return ["no checkpointed steps: nothing to rewind to (only turns lorch checkpoints can be)"]
    how = f"lorch rewind --run {run_id} --to STEP [--after]"
    out = [f"steps to rewind to ({how}):"]
    if not state.finished:
        out[0] = f"steps (the run is unfinished: a rewind waits for its end; then {how}):"
    for s in found:
        after = f"after {s.post[:12]}" if s.post else "no checkpoint after (no answer)"
        out.append(f"  {s.step:<16} {s.action:<18} {s.role:<15} before {s.pre[:12]}  {after}")
        files = turn_files(workspace, s)
        if files is None and s.post is not None:
            files = list(s.changed)
            more = s.changed_count - len(files)
            note = " (from the ledger; the checkpoint store cannot tell)"
            if more > 0:
                note = f" and {more} more{note}"
            out.append(f"    {s.changed_count} file(s) changed{note}")
        elif files is not None:
            out.append(f"    {len(files)} file(s) changed")
        for rel in files or []:
            out.append(f"      {rel}")
    return out


def outcome_lines(outcome: Outcome, workspace: Path, limit: int = 20) -> list[str]:
    """What ``lorch rewind`` says it did."""
    out = []
    if outcome.finished_interrupted:
        out.append("finished a rewind that was interrupted")
    r = outcome.rewind
    if r is None:
        out.append(f"the workspace already is checkpoint {outcome.tree[:12]}: nothing to do")
    else:
        p = r.payload
        when = "before" if p["phase"] == "pre" else "after"
        if r.undo:
            out.append(
                f"undid the rewind to {when} step {p['step']} of run {r.run_id}: the workspace "
                f"is as that rewind found it (checkpoint {outcome.tree[:12]}; recorded as "
                f"ledger record {r.record})"
            )
        else:
            out.append(
                f"rewound the workspace to {when} step {p['step']} of run {r.run_id} "
                f"(checkpoint {outcome.tree[:12]}; recorded as ledger record {r.record})"
            )
        for rel in outcome.restored:
            there = (workspace / rel).exists() or (workspace / rel).is_symlink()
            out.append(f"  {'restored' if there else 'removed '} {rel}")
        if not outcome.restored:
            out.append("  no file needed to change")
        if not r.undo:
            out.append(
                f"the workspace as it was is checkpoint {str(p['saved'])[:12]}: "
                "`lorch rewind --undo` brings it back"
            )
    if outcome.unheld:
        shown = ", ".join(outcome.unheld[:limit])
        more = f" and {len(outcome.unheld) - limit} more" if len(outcome.unheld) > limit else ""
        out.append(
            f"not restored, left as they are (no checkpoint holds them: ignored or hidden): "
            f"{shown}{more}"
        )
    return out
