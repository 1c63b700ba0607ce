"""Helpers for end-to-end runs of the real ``lorch`` binary."""

from __future__ import annotations

import collections
import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lorch.app.scenarios import materialize
from lorch.store import ledger

Runner = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def scenario(tmp_path: Path) -> Callable[[str], Path]:
    def make(name: str) -> Path:
        ws = tmp_path / "ws"
        materialize(name, ws)
        return ws

    return make


@pytest.fixture
def lorch(lorch_bin: str, clean_env: dict[str, str]) -> Runner:
    def run(
        *args: str, env: dict[str, str] | None = None, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [lorch_bin, *args],
            capture_output=True,
            text=True,
            env={**clean_env, **(env or {})},
            timeout=timeout,
        )

    return run


def run_ids(ws: Path) -> list[str]:
    return sorted(p.stem for p in (ws / "events").glob("run-*.ndjson"))


def records(ws: Path, run_id: str | None = None) -> list[dict[str, Any]]:
    rid = run_id or run_ids(ws)[-1]
    return list(ledger.read(ws / "events" / f"{rid}.ndjson"))


def completions(ws: Path) -> collections.Counter[str]:
    """How many times each key's work was really done (mockagent journals)."""
    c: collections.Counter[str] = collections.Counter()
    for journal in ws.glob(".mockagent/*/journal.ndjson"):
        for line in journal.read_text().splitlines():
            e = json.loads(line)
            if e["state"] == "completed":
                c[e["ik"]] += 1
    return c


def terminal_events(ws: Path, run_id: str | None = None) -> list[str]:
    from lorch.wire.vocabulary import TERMINAL_EVENTS

    out = []
    for r in records(ws, run_id):
        if r.get("event") in TERMINAL_EVENTS and r["from"]["agent_type"] != "system":
            out.append(r["event"] + (f":{r['status']}" if r["event"] == "review.completed" else ""))
    return out
