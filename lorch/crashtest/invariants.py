"""Invariants that compare a resumed run with its baseline and its own ledger.

They read only what is on disk after the last resume (the ledger, receipts, the
workspace's file names) and fold the ledger with the workflow's own reducer, so
"accepted" means here exactly what it means to lorch. Each raises
:class:`Broken` with the invariant's name and a one-line reason.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from lorch.core.state import Pending, State
from lorch.crashtest.workspace import final_status, read_records
from lorch.store import derived_files as store
from lorch.store import layout
from lorch.store.layout import LORCH_DIRS
from lorch.wire.errors import StorageError
from lorch.wire.protocol import Record

# lorch's own directories: a temp file left in one of them is lorch's.
TEMP_NAME = re.compile(r"^\..+\.tmp-\d+-[0-9a-f]+$")


class Broken(Exception):
    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(detail)
        self.invariant = invariant
        self.detail = detail


@dataclass
class Folded:
    """What the reducer makes of a ledger: accepted commands, in order."""

    accepted: list[Pending] = field(default_factory=list)
    run_id: str = ""


def _short(ik: str) -> str:
    return ik[:19] + "…"


def fold(recs: list[Record]) -> Folded:
    """Fold the ledger; fail ``no_command_after_answer`` on the way.

    A command whose key already has an accepted terminal event in the ledger,
    or whose pending answer (a terminal event not rejected) precedes it, is a
    command sent after its answer was known: resume must never do that.
    """
    out = Folded()
    state = State()
    accepted: set[str] = set()
    for i, r in enumerate(recs, start=1):
        if r.get("kind") == "command":
            accepted.update(p.ik for p in out.accepted)
            ik = str(r["idempotency_key"])
            p = state.pending
            answered = p is not None and p.ik == ik and p.terminal is not None and p.failed is None
            if answered or ik in accepted:
                raise Broken(
                    "no_command_after_answer",
                    f"record {i}: command {r['action']} ({_short(ik)}) sent again although "
                    "its answer was already in the ledger",
                )
        n = state.accepted
        state.fold(r)
        if state.accepted != n and state.last_accepted is not None:
            out.accepted.append(state.last_accepted)
    out.run_id = state.run_id
    return out


def command_sequence(recs: list[Record]) -> list[tuple[str, str, str]]:
    """(action, key, correlation id) of each command, a resend of the pending
    command (same key and id, right after it) counted once."""
    seq: list[tuple[str, str, str]] = []
    for r in recs:
        if r.get("kind") != "command":
            continue
        item = (str(r["action"]), str(r["idempotency_key"]), str(r["correlation_id"]))
        if not seq or seq[-1] != item:
            seq.append(item)
    return seq


def check_commands_match_baseline(recs: list[Record], baseline: list[Record]) -> None:
    got, want = command_sequence(recs), command_sequence(baseline)
    if got == want:
        return
    k = next(
        (i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b),
        min(len(got), len(want)),
    )

    def name(seq: list[tuple[str, str, str]]) -> str:
        return f"{seq[k][0]} ({_short(seq[k][1])}, {seq[k][2]})" if k < len(seq) else "nothing"

    raise Broken(
        "commands_match_baseline",
        f"command {k + 1} of the resumed run is {name(got)}, the baseline's is {name(want)} "
        f"({len(got)} vs {len(want)} distinct commands)",
    )


def check_receipts_complete(ws: Path, folded: Folded) -> None:
    """Exactly one receipt per accepted command; step numbers unique and dense per run."""
    try:
        found = [(p, data) for p, data in store.iter_receipts(ws)]
    except StorageError as e:
        raise Broken("receipts_complete", str(e)) from None
    mine = [(p, d) for p, d in found if d.get("run_id") == folded.run_id]
    count = collections.Counter(str(d.get("idempotency_key")) for _, d in mine)
    for p in folded.accepted:
        n = count.pop(p.ik, 0)
        if n != 1:
            raise Broken(
                "receipts_complete",
                f"accepted command {p.command['action']} ({_short(p.ik)}) has {n} receipts "
                f"({len(folded.accepted)} accepted commands, {len(mine)} receipts)",
            )
    if count:
        ik = next(iter(count))
        raise Broken("receipts_complete", f"a receipt names {_short(ik)}, never accepted")
    # Steps are numbered per task (receipts/<task>/): a run after intake has several.
    by_task: dict[str, list[int]] = collections.defaultdict(list)
    for path, data in mine:
        m = re.fullmatch(r"step-(\d+)\.json", path.name)
        assert m is not None
        if data.get("step") != int(m.group(1)):
            raise Broken("receipts_complete", f"{path.name} says step {data.get('step')} inside")
        by_task[path.parent.name].append(int(m.group(1)))
    for task, steps in sorted(by_task.items()):
        steps.sort()
        if steps != list(range(steps[0], steps[0] + len(steps))):
            gap = next(s for a, s in itertools.pairwise(steps) if s != a + 1)
            raise Broken(
                "receipts_complete",
                f"step numbers of run {folded.run_id} for task {task} are not dense: "
                f"{len(steps)} receipts, a gap before step {gap}",
            )


def check_no_stale_temp_files(ws: Path) -> None:
    """No temp file of an atomic write may outlive the resume (a crash between
    create and rename leaves one; resume must clear them)."""
    for d in LORCH_DIRS:
        base = ws / d
        if not base.is_dir():
            continue
        for p in sorted(base.rglob(".*")):
            if TEMP_NAME.match(p.name):
                raise Broken("no_stale_temp_files", f"{p.relative_to(ws)} left behind")


def check_snapshot_once(recs: list[Record], baseline: list[Record]) -> None:
    """The run's snapshot is recorded once, and it is the baseline's.

    Keys are derived from the snapshot taken at the start of the run; a resume
    must reuse the recorded one. A second ``system.snapshot`` (even one the
    reducer ignores) claims the run started from another workspace.
    """

    def snaps(rs: list[Record]) -> list[str]:
        return [
            str((r.get("payload") or {}).get("snapshot_id"))
            for r in rs
            if r.get("event") == "system.snapshot"
        ]

    got, want = snaps(recs), snaps(baseline)
    if len(got) != 1:
        raise Broken(
            "snapshot_once",
            f"the ledger records {len(got)} snapshots ({', '.join(got) or 'none'}); "
            "a run has one, and resume reuses it",
        )
    if got != want:
        raise Broken(
            "snapshot_once",
            f"the run's snapshot is {got[0]}, the baseline's {', '.join(want) or 'none'}",
        )


def receipt_files(ws: Path) -> dict[str, bytes]:
    """Every receipt file on disk (relative path → bytes), read before a resume."""
    out: dict[str, bytes] = {}
    base = layout.receipts(ws)
    if base.is_dir():
        for p in sorted(base.glob("*/step-*.json")):
            with contextlib.suppress(OSError):
                out[str(p.relative_to(ws))] = p.read_bytes()
    return out


def check_receipts_write_once(ws: Path, before: dict[str, bytes]) -> None:
    """A receipt on disk before a resume is there, byte for byte, after it.

    Receipts are write-once: a step number, once taken, is never rewritten,
    replaced or removed (a rebuilt receipt goes to a free number).
    """
    after = receipt_files(ws)
    for rel, data in before.items():
        now = after.get(rel)
        if now is None:
            raise Broken("receipts_write_once", f"{rel} was there before resume, gone after")
        if now != data:
            raise Broken("receipts_write_once", f"{rel} was rewritten by resume")


def check_receipts_before_end(ws: Path) -> None:
    """A durable end of run comes after every receipt is durable (the runner
    flushes receipts before it records the end): a crash state whose ledger says
    the run is over holds every receipt already, before any resume."""
    recs = read_records(ws)
    if final_status(recs) == "running":
        return
    folded = fold(recs)
    try:
        have = {data.get("idempotency_key") for _, data in store.iter_receipts(ws)}
    except StorageError as e:  # a receipt's name survived its data: a verdict, not a crash
        raise Broken("receipts_before_end", str(e)) from None
    missing = [p for p in folded.accepted if p.ik not in have]
    if missing:
        raise Broken(
            "receipts_before_end",
            f"the durable ledger records the end of the run, but the receipt of "
            f"{missing[0].command['action']} is not on disk",
        )
