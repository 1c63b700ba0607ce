"""What a run left in its workspace, read back: ledger, agents' journals, file hashes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from lorch.core.workflow import replay
from lorch.store import layout, ledger, snapshot
from lorch.wire.checksum import sha256_file


def workspace_files(ws: Path) -> dict[str, str]:
    return {rel: sha256_file(ws / rel)[0] for rel in snapshot.iter_files(ws)}


def the_ledger(ws: Path) -> Path | None:
    found = layout.runs(ws)
    return found[0] if found else None


def read_records(ws: Path, *, strict: bool = False) -> list[dict[str, Any]]:
    path = the_ledger(ws)
    if path is None:
        return []
    return list(ledger.read(path, validate=strict, allow_torn=not strict))


def journals(ws: Path) -> list[dict[str, Any]]:
    out = []
    for j in sorted(ws.glob(".mockagent/*/journal.ndjson")):
        for line in j.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def final_status(records: list[dict[str, Any]]) -> str:
    """How the ledger says the run stands: the same fold run and resume use."""
    return replay(records).status
