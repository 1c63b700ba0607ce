"""Workspaces for intake runs: the bundled ``intake`` scenario, with its orchestrator swappable."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lorch.app.scenarios import materialize
from lorch.store import ledger

Record = dict[str, Any]


def proposal(*tasks: str, plans: tuple[str, ...] = ("PLAN.md",)) -> Record:
    return {
        "events": [
            {
                "type": "orchestration.proposed_tasks",
                "payload": {
                    "plan_candidates": [
                        {"path": p, "confidence": round(0.9 - 0.1 * i, 2)}
                        for i, p in enumerate(plans)
                    ],
                    "derived_tasks": [{"id": t, "title": f"Task {t}"} for t in tasks],
                },
            }
        ]
    }


@pytest.fixture
def intake_ws(tmp_path: Path) -> Callable[..., Path]:
    """The intake scenario in a fresh workspace; ``orchestration=`` replaces its fixture."""

    def make(orchestration: Record | None = None) -> Path:
        ws = tmp_path / "ws"
        materialize("intake", ws)
        if orchestration is not None:
            (ws / "fixtures" / "orchestration.json").write_text(json.dumps(orchestration))
        return ws

    return make


@pytest.fixture
def lorch_in(
    lorch_bin: str, clean_env: dict[str, str]
) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``lorch ARGS`` in a workspace with ``stdin`` as its input (None: /dev/null)."""

    def run(
        ws: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [lorch_bin, *args, "--workspace", str(ws)],
            input=stdin,
            stdin=subprocess.DEVNULL if stdin is None else None,
            capture_output=True,
            text=True,
            env={**clean_env, **(env or {})},
            timeout=90,
        )

    return run


def the_ledger(ws: Path) -> list[Record]:
    (path,) = sorted((ws / "events").glob("run-*.ndjson"))
    return list(ledger.read(path))


def decisions(ws: Path) -> list[Record]:
    return [r for r in the_ledger(ws) if r.get("event") == "system.user_decision"]


def task_commands(ws: Path) -> list[tuple[str, str]]:
    return [
        (r["task_id"], r["action"])
        for r in the_ledger(ws)
        if r["kind"] == "command" and r["task_id"] != "intake"
    ]
