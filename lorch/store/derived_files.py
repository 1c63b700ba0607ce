"""Derived files: receipts, run state and the run index (all written atomically).

These are caches of the ledger (DESIGN.md §5.2): resume rebuilds any that a
crash left missing or stale. Receipt step numbers are taken by creating the file
exclusively, so a step number once used is never reused, across resumes and runs.

They live in the workspace, where agents write too, so reading one back is
total: any content, a FIFO, a symlink or a huge file is either set aside (the
index, rebuilt from what is valid in it) or refused with a :class:`StorageError`
naming the file, never a traceback or a blocked read.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from lorch.store import layout, safefs
from lorch.store.atomic import atomic_create_many, atomic_write_json, json_bytes
from lorch.wire import schemas
from lorch.wire.errors import PathEscape, StorageError

_STEP = re.compile(r"^step-(\d+)\.json$")
# No derived file lorch writes comes near this; a larger one is not lorch's.
DERIVED_MAX_BYTES = 64 << 20


def receipts_dir(workspace: Path, task_id: str) -> Path:
    return layout.receipts(workspace, task_id)


def iter_receipts(
    workspace: Path, task_id: str | None = None, *, problems: list[str] | None = None
) -> list[tuple[Path, dict[str, Any]]]:
    """Every receipt (optionally of one task), in step order.

    A file that is no receipt (not a JSON object, see :func:`read_json`) is a
    StorageError naming it; with ``problems``, its line goes there instead and
    the file is skipped.
    """
    base = layout.receipts(workspace)
    dirs = [base / task_id] if task_id else sorted(p for p in base.glob("*") if p.is_dir())
    out: list[tuple[int, str, Path, dict[str, Any]]] = []
    for d in dirs:
        if not d.is_dir():
            continue
        for p in d.iterdir():
            m = _STEP.match(p.name)
            if not m:
                continue
            try:
                data = _receipt(workspace, d.name, p)
            except StorageError as e:
                if problems is None:
                    raise
                problems.append(str(e))
                continue
            out.append((int(m.group(1)), d.name, p, data))
    out.sort(key=lambda t: (t[1], t[0]))
    return [(p, data) for _, _, p, data in out]


def _receipt(workspace: Path, task: str, path: Path) -> dict[str, Any]:
    data = read_json(workspace, f"receipts/{task}/{path.name}")
    if not isinstance(data, dict):
        found = "nothing" if data is None else f"a JSON {type(data).__name__}"
        raise StorageError(
            f"{path}: not a receipt (a JSON object expected, found {found}): lorch did not "
            "write it; remove it, and `lorch resume` writes the run's receipts again"
        )
    return data


def find_receipt(workspace: Path, task_id: str, run_id: str, ik: str) -> Path | None:
    for p, data in iter_receipts(workspace, task_id):
        if data.get("run_id") == run_id and data.get("idempotency_key") == ik:
            return p
    return None


def next_receipt_number(workspace: Path, task_id: str) -> int:
    d = receipts_dir(workspace, task_id)
    existing = [int(m.group(1)) for p in d.glob("step-*.json") if (m := _STEP.match(p.name))]
    return max(existing, default=0) + 1


def write_receipt(
    workspace: Path, receipt: dict[str, Any], *, start: int | None = None
) -> tuple[Path, int]:
    """Write a receipt at the next free step number; return (path, step).

    ``receipt`` must not contain ``step``; it is filled in here. ``start`` is a
    caller's guess of the next free number (saves a directory scan); a taken
    number is skipped either way, since files are created exclusively.
    """
    return write_receipts(workspace, [receipt], start=start)[0]


def write_receipts(
    workspace: Path, receipts: list[dict[str, Any]], *, start: int | None = None
) -> list[tuple[Path, int]]:
    """Write receipts of one task at free step numbers; return (path, step) of each.

    They are written together (:func:`atomic_create_many`: one sync of the
    directory for all). A receipt whose number turns out to be taken gets the
    next free one after the batch.
    """
    if not receipts:
        return []
    d = receipts_dir(workspace, receipts[0]["task_id"])
    step = start if start is not None else next_receipt_number(workspace, receipts[0]["task_id"])
    written: list[tuple[Path, int]] = []
    todo = list(receipts)
    while todo:
        items = []
        for i, receipt in enumerate(todo):
            body = {**receipt, "step": step + i}
            schemas.validate("receipt", body, source=f"receipt step {step + i}")
            items.append((d / f"step-{step + i}.json", json_bytes(body)))
        created = atomic_create_many(items)
        written += [
            (path, step + i)
            for i, ((path, _), ok) in enumerate(zip(items, created, strict=True))
            if ok
        ]
        todo = [r for r, ok in zip(todo, created, strict=True) if not ok]
        step += len(items)
    return written


def write_run_state(workspace: Path, state: dict[str, Any]) -> None:
    schemas.validate("run-state", state, source="state/run.json")
    atomic_write_json(workspace / layout.RUN_JSON, state)


def read_json(workspace: Path, rel: str) -> Any:
    """The JSON document ``workspace/rel`` holds; None if there is no such file.

    StorageError, naming the file, for anything else that is not a JSON
    document: not UTF-8, not JSON, nested too deep, over
    :data:`DERIVED_MAX_BYTES`, not a regular file, or reached through a symlink.
    """
    path = workspace / rel
    try:
        raw = safefs.read_regular(workspace, rel, DERIVED_MAX_BYTES)
    except FileNotFoundError:
        return None
    except (OSError, PathEscape) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise StorageError(f"{path}: unreadable: {reason}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except ValueError as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise StorageError(f"{path}: not a JSON document: {e}") from None
    except RecursionError:
        raise StorageError(f"{path}: not a JSON document: nested too deeply") from None


def read_index(workspace: Path) -> dict[str, Any]:
    """``state/index.json``, with only its valid entries (one per run).

    The index is derived (every run has its ledger), so whatever else is there
    — an entry of the wrong shape, a file that is not JSON, not a file at all —
    is left out, and the next write replaces it; ``lorch status`` lists a
    ledger the index lacks, and ``lorch resume --run`` puts it back.
    """
    try:
        data = read_json(workspace, "state/index.json")
    except StorageError:
        return {"runs": []}
    runs = data.get("runs") if isinstance(data, dict) else None
    by_id: dict[str, dict[str, Any]] = {}
    for entry in runs if isinstance(runs, list) else []:
        if schemas.is_valid("index", {"runs": [entry]}):
            by_id[entry["run_id"]] = entry
    return {"runs": list(by_id.values())}


def update_index(workspace: Path, entry: dict[str, Any]) -> None:
    """Insert or replace the entry for ``entry['run_id']``; other runs are kept."""
    index = read_index(workspace)
    runs = [r for r in index["runs"] if r.get("run_id") != entry["run_id"]]
    runs.append(entry)
    runs.sort(key=lambda r: (r.get("started_at", ""), r.get("run_id", "")))
    body = {"runs": runs}
    schemas.validate("index", body, source="state/index.json")
    atomic_write_json(workspace / layout.INDEX_JSON, body)
