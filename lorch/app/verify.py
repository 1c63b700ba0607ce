"""``lorch verify``: the run-validation rules (MASTER-SPEC §11.1), over the ledger.

Each rule gives a list of problems; the run passes when every list is empty.
The ledger must be lorch's from its first line to its last (its chain,
``lorch/store/ledger.py``); every receipt must be the receipt of an answer that
ledger accepted (a receipt is a derived file anyone could write); every
verdict file must still hold what lorch captured at the end of its turn (the
run decided from the captured bytes, a later change counted for nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lorch.core.build_loop import verdict_status
from lorch.core.state import State
from lorch.engine.derived import receipt
from lorch.engine.recorder import fingerprint, read_verdict_file
from lorch.store import derived_files as store
from lorch.store import layout, ledger
from lorch.store.paths import safe_relpath
from lorch.wire import schemas
from lorch.wire.checksum import sha256_file
from lorch.wire.errors import LedgerError, PathEscape, StorageError, UsageError
from lorch.wire.protocol import Record
from lorch.wire.vocabulary import TERMINAL_EVENTS

Rules = dict[str, list[str]]


def verify(workspace: Path, run_id: str) -> Rules:
    """Rule name → problems found (empty list: the rule holds)."""
    path = layout.ledger(workspace, run_id)
    if not path.exists():
        raise UsageError(f"{workspace}: no run {run_id} (no {layout.ledger_rel(run_id)})")
    rules: Rules = {
        "ledger_replays": [],
        "terminal_event_for_every_command": [],
        "receipts_match_files": [],
        "final_review_approved": [],
        "spec_terminal_event": [],
        "run_completed": [],
        "derived_files_valid": [],
        "receipts_in_ledger": [],
        "verdicts_as_captured": [],
    }
    chain = _Chain()
    state, sent_at = _check_ledger(path, rules, chain)
    _check_receipts(workspace, run_id, sent_at, rules)
    _check_receipts_in_chain(workspace, run_id, state, chain, rules)
    _check_verdicts(workspace, state, rules)
    if state.status != "completed":
        rules["run_completed"].append(
            f"run status is {state.status}" + (f": {state.failure}" if state.failure else "")
        )
    _check_state_files(workspace, run_id, state, rules)
    _rewound(workspace, run_id, rules)
    return rules


def _rewound(workspace: Path, run_id: str, rules: Rules) -> None:
    """A workspace rewound after the run (``lorch rewind``) fails the file rules, saying why."""
    from lorch.app.rewind import rewound_note

    failed = [name for name in ("receipts_match_files", "verdicts_as_captured") if rules[name]]
    note = rewound_note(workspace, run_id) if failed else None
    if note is not None:
        for name in failed:
            rules[name].append(note)


@dataclass
class _Chain:
    """What the chain proves: the receipt each accepted answer has, by key."""

    receipts: dict[str, Record] = field(default_factory=dict)
    whole: bool = True  # False: the ledger stopped being lorch's (or readable) part way

    def fold(self, state: State, accepted: int) -> None:
        p = state.last_accepted
        if state.accepted != accepted and p is not None:
            body = receipt(state.run_id, p, state.snapshot_id or "")
            if body is not None:
                self.receipts[p.ik] = body


def _check_ledger(path: Path, rules: Rules, chain: _Chain) -> tuple[State, dict[str, int]]:
    """Replay the ledger (the same fold as run and resume) and check its answers.

    Also returns, for each key, the ledger record of its last command.
    """
    state = State()
    open_keys: dict[str, str] = {}
    answered: set[str] = set()
    # Per task (a run after intake has several): its last review, and whether
    # spec maintenance ended it.
    last_review: dict[str, Record | None] = {}
    reviews: dict[str, Record] = {}  # the last review answer, by its key
    spec_done: dict[str, bool] = {}
    sent_at: dict[str, int] = {}
    try:
        for n, record in enumerate(ledger.read(path, allow_torn=False), start=1):
            accepted = state.accepted
            state.fold(record)
            chain.fold(state, accepted)
            if record["kind"] == "command":
                open_keys[record["correlation_id"]] = record["idempotency_key"]
                if record["action"] not in ("intake", "task_discovery"):
                    last_review.setdefault(record["task_id"], None)
                    spec_done.setdefault(record["task_id"], False)
                sent_at[record["idempotency_key"]] = n
                continue
            name = record.get("event")
            if name == "system.verdict":
                # The review it captured decides by these bytes (build_loop.verdict_status).
                review = reviews.get(str(record["payload"].get("idempotency_key")))
                if review is not None:
                    last_review[review["task_id"]] = {
                        **review,
                        "status": verdict_status(review, record["payload"]),
                    }
            if name in TERMINAL_EVENTS and record.get("from", {}).get("agent_type") != "system":
                answered.add(record["correlation_id"])
                if name == "review.completed":
                    last_review[record["task_id"]] = record
                    reviews = {open_keys.get(record["correlation_id"], ""): record}
                if name in ("spec.updated", "spec.no_changes_needed"):
                    spec_done[record["task_id"]] = True
        ledger.check_head(path, state.records)
    except LedgerError as e:
        rules["ledger_replays"].append(str(e))
        chain.whole = False
    for corr in sorted(set(open_keys) - answered):
        rules["terminal_event_for_every_command"].append(f"command {corr} has no terminal event")
    for task, review in sorted(last_review.items()) or [("", None)]:
        of = f"task {task}: " if len(last_review) > 1 else ""
        if review is None or review.get("status") != "approved":
            status = None if review is None else review.get("status")
            rules["final_review_approved"].append(f"{of}last review.completed status is {status!r}")
    for task, done in sorted(spec_done.items()) or [("", False)]:
        of = f"task {task}: " if len(spec_done) > 1 else ""
        if not done:
            rules["spec_terminal_event"].append(
                f"{of}no spec.updated or spec.no_changes_needed event"
            )
    return state, sent_at


def _check_receipts(workspace: Path, run_id: str, sent_at: dict[str, int], rules: Rules) -> None:
    unreadable = rules["derived_files_valid"]
    found = store.iter_receipts(workspace, problems=unreadable)
    receipts = [(p, r) for p, r in found if r.get("run_id") == run_id]
    if not receipts:
        rules["receipts_match_files"].append("no receipts for this run")
    valid = []
    for p, r in receipts:
        errors = schemas.errors("receipt", r)
        for err in errors:
            rules["derived_files_valid"].append(f"{p}: {err[0]}: {err[1]}")
        if not errors:  # only a receipt of the right shape is compared with the files
            valid.append((p, r))
    receipts = valid
    # Only the newest receipt of each path must match: later rounds rewrite files.
    # "Newest" is by the ledger, not by step number: a receipt that resume
    # rebuilt (someone deleted it) has a higher step than the rounds after it.
    newest: dict[str, tuple[Path, Record]] = {}
    by_ledger = sorted(receipts, key=lambda pr: sent_at.get(str(pr[1].get("idempotency_key")), 0))
    for p, r in by_ledger:
        for art in r.get("artifacts", []):
            newest[art["path"]] = (p, art)
    for rel, (p, art) in sorted(newest.items()):
        try:
            full = safe_relpath(workspace, rel)
        except PathEscape as e:
            rules["receipts_match_files"].append(f"{p}: {e}")
            continue
        if not full.is_file():
            rules["receipts_match_files"].append(f"{p}: {rel} is missing")
            continue
        try:
            sha, size = sha256_file(full)
        except OSError as e:  # a FIFO, a device, a directory: refused unread
            rules["receipts_match_files"].append(f"{p}: {rel}: {e.strerror or e}")
            continue
        if sha != art["sha256"] or size != art["size"]:
            rules["receipts_match_files"].append(
                f"{p}: {rel} has {sha} ({size} bytes), receipt says {art['sha256']}"
            )


# What a receipt says that the ledger proves (its step and time are the writer's).
_PROVEN = (
    "task_id",
    "action",
    "agent_type",
    "correlation_id",
    "command_message_id",
    "terminal_event",
    "status",
    "event_ids",
    "artifacts",
    "checkpoint",
)


def _check_receipts_in_chain(
    workspace: Path, run_id: str, state: State, chain: _Chain, rules: Rules
) -> None:
    """Every receipt of the run is one the ledger's accepted answers imply, field by field."""
    problems = rules["receipts_in_ledger"]
    for p, r in store.iter_receipts(workspace):
        if r.get("run_id") != run_id:
            continue
        ik = str(r.get("idempotency_key"))
        proven = chain.receipts.get(ik)
        if proven is None:
            where = "" if chain.whole else " (the ledger is not whole: see ledger_replays)"
            problems.append(
                f"{p}: a {r.get('action')} answer ({ik[:19]}…) the ledger never accepted: "
                f"the receipt is not lorch's{where}"
            )
            continue
        differs = [k for k in _PROVEN if r.get(k) != proven.get(k)]
        if differs:
            problems.append(
                f"{p}: {', '.join(differs)} differ from the answer the ledger accepted ({ik[:19]}…)"
            )


def _check_verdicts(workspace: Path, state: State, rules: Rules) -> None:
    """Each verdict file still holds the bytes lorch captured at the end of its turn."""
    for rel, captured in sorted(state.verdicts.items()):
        was = fingerprint(captured)
        if captured.get("reported"):
            rules["verdicts_as_captured"].append(
                f"{rel} changed after the turn that wrote it (lorch recorded it); the run "
                "decided from the captured bytes"
            )
            continue
        now = fingerprint(read_verdict_file(workspace, rel))
        if now != was:
            rules["verdicts_as_captured"].append(
                f"{rel} is {now[:19]}… but lorch captured {was[:19]}… at the end of the turn "
                "that wrote it; the run decided from the captured bytes, the change counts "
                "for nothing"
            )


def _check_state_files(workspace: Path, run_id: str, state: State, rules: Rules) -> None:
    run_json = workspace / layout.RUN_JSON
    data = _derived(workspace, "state/run.json", rules)
    if isinstance(data, dict) and data.get("run_id") == run_id:
        if data.get("status") != state.status:
            rules["run_completed"].append(
                f"state/run.json says {data.get('status')}, ledger says {state.status}"
            )
        for err in schemas.errors("run-state", data):
            rules["derived_files_valid"].append(f"{run_json}: {err[0]}: {err[1]}")
    index = _derived(workspace, "state/index.json", rules)
    if index is not None:
        for err in schemas.errors("index", index):
            rules["derived_files_valid"].append(f"state/index.json: {err[0]}: {err[1]}")


def _derived(workspace: Path, rel: str, rules: Rules) -> object:
    """The JSON of a derived file (None if absent); a file that is none is a problem."""
    try:
        return store.read_json(workspace, rel)
    except StorageError as e:
        rules["derived_files_valid"].append(str(e))
        return None
