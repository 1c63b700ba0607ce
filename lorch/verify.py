"""``lorch verify``: the run-validation rules (MASTER-SPEC §11.1), over the ledger.

Each rule gives a list of problems; the run passes when every list is empty.
"""

from __future__ import annotations

from pathlib import Path

from lorch import ledger, schemas, store
from lorch.checksum import sha256_file
from lorch.errors import LedgerError, PathEscape, StorageError, UsageError
from lorch.paths import safe_relpath
from lorch.protocol import TERMINAL_EVENTS, Record
from lorch.workflow import State

Rules = dict[str, list[str]]


def verify(workspace: Path, run_id: str) -> Rules:
    """Rule name → problems found (empty list: the rule holds)."""
    path = workspace / "events" / f"{run_id}.ndjson"
    if not path.exists():
        raise UsageError(f"{workspace}: no run {run_id} (no events/{run_id}.ndjson)")
    rules: Rules = {
        "ledger_replays": [],
        "terminal_event_for_every_command": [],
        "receipts_match_files": [],
        "final_review_approved": [],
        "spec_terminal_event": [],
        "run_completed": [],
        "derived_files_valid": [],
    }
    state, sent_at = _check_ledger(path, rules)
    _check_receipts(workspace, run_id, sent_at, rules)
    if state.status != "completed":
        rules["run_completed"].append(
            f"run status is {state.status}" + (f": {state.failure}" if state.failure else "")
        )
    _check_state_files(workspace, run_id, state, rules)
    return rules


def _check_ledger(path: Path, rules: Rules) -> tuple[State, dict[str, int]]:
    """Replay the ledger (the same fold as run and resume) and check its answers.

    Also returns, for each key, the ledger record of its last command.
    """
    state = State()
    open_keys: dict[str, str] = {}
    answered: set[str] = set()
    # Per task (a run after intake has several): its last review, and whether
    # spec maintenance ended it.
    last_review: dict[str, Record | None] = {}
    spec_done: dict[str, bool] = {}
    sent_at: dict[str, int] = {}
    try:
        for n, record in enumerate(ledger.read(path, allow_torn=False), start=1):
            state.fold(record)
            if record["kind"] == "command":
                open_keys[record["correlation_id"]] = record["idempotency_key"]
                if record["action"] not in ("intake", "task_discovery"):
                    last_review.setdefault(record["task_id"], None)
                    spec_done.setdefault(record["task_id"], False)
                sent_at[record["idempotency_key"]] = n
                continue
            name = record.get("event")
            if name in TERMINAL_EVENTS and record.get("from", {}).get("agent_type") != "system":
                answered.add(record["correlation_id"])
                if name == "review.completed":
                    last_review[record["task_id"]] = record
                if name in ("spec.updated", "spec.no_changes_needed"):
                    spec_done[record["task_id"]] = True
    except LedgerError as e:
        rules["ledger_replays"].append(str(e))
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


def _check_state_files(workspace: Path, run_id: str, state: State, rules: Rules) -> None:
    run_json = workspace / "state" / "run.json"
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
