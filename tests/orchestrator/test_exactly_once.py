"""``"idempotency": "lorch"``: checkpoints around each command, rollback before a re-send.

End-to-end with tests/agents/appender.py, which redoes the work of every
command it receives (each appends its key to ``effects.log``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from lorch.app import scenarios
from lorch.crashtest.effects import effects_problem
from lorch.crashtest.workspace import workspace_files
from lorch.store.checkpoint import Checkpoints
from tests.appender_scenario import scenario
from tests.orchestrator.conftest import Runner, records

pytestmark = pytest.mark.e2e


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    scenarios.materialize(scenario(tmp_path, "lorch"), ws)
    return ws


def events(recs: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in recs if r.get("event") == name]


def offset_of(recs: list[dict[str, Any]], name: str) -> int:
    """1-based ledger offset of the first record named ``name``."""
    return next(i for i, r in enumerate(recs, 1) if r.get("event", r.get("action")) == name)


def clean(tmp_path: Path, lorch: Runner) -> tuple[list[dict[str, Any]], dict[str, str]]:
    ws = tmp_path / "clean"
    scenarios.materialize(scenario(tmp_path, "lorch"), ws)
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    return records(ws), workspace_files(ws)


def test_clean_run_records_checkpoints_write_ahead(workspace: Path, lorch: Runner) -> None:
    r = lorch("run", "--workspace", str(workspace))
    assert r.returncode == 0, r.stderr
    recs = records(workspace)
    commands = [(i, c) for i, c in enumerate(recs) if c["kind"] == "command"]
    assert len(commands) == 5
    ck = Checkpoints(workspace, workspace / "state" / "checkpoints.git")
    for i, cmd in commands:
        pre = recs[i - 1]
        assert pre["event"] == "system.checkpoint" and pre["payload"]["phase"] == "pre"
        assert pre["payload"]["idempotency_key"] == cmd["idempotency_key"]
        post = next(
            p
            for p in events(recs[i:], "system.checkpoint")
            if p["payload"]["idempotency_key"] == cmd["idempotency_key"]
        )
        assert post["payload"]["phase"] == "post"
        changed = ck.changed(pre["payload"]["tree"], post["payload"]["tree"])
        assert changed == post["payload"]["changed"] and "effects.log" in changed
    receipts = sorted((workspace / "receipts" / "T-0007").glob("step-*.json"))
    assert all("pre" in json.loads(p.read_text())["checkpoint"] for p in receipts)
    assert effects_problem(workspace, recs, "effects.log") is None
    assert not events(recs, "system.rollback")
    assert "checkpoint" in r.stdout and "after builder's turn" in r.stdout


@pytest.mark.parametrize("where", ["builder.progress", "artifact.produced", "log"])
def test_lorch_killed_mid_turn_rolls_back_after_orphans_then_resends(
    tmp_path: Path, workspace: Path, lorch: Runner, where: str
) -> None:
    base_recs, base_files = clean(tmp_path, lorch)
    k = offset_of(base_recs, where)
    r = lorch("run", "--workspace", str(workspace), env={"LORCH_CRASH_AT": f"after:{k}"})
    assert r.returncode != 0
    r = lorch("resume", "--workspace", str(workspace))
    assert r.returncode == 0, r.stderr
    recs = records(workspace)
    (rollback,) = events(recs, "system.rollback")
    assert rollback["payload"]["restored_count"] >= 1
    assert "effects.log" in rollback["payload"]["restored"]
    # Rolled back only once the crashed run's agents were ended (system.resumed).
    assert recs.index(events(recs, "system.resumed")[0]) < recs.index(rollback)
    resend = next(c for c in recs[recs.index(rollback) :] if c["kind"] == "command")
    assert resend["idempotency_key"] == rollback["payload"]["idempotency_key"]
    assert effects_problem(workspace, recs, "effects.log") is None
    assert workspace_files(workspace) == base_files
    assert "rolled back" in r.stdout


def hanging(tmp_path: Path, idempotency: str) -> Path:
    ws = tmp_path / f"hang-{idempotency}"
    scenarios.materialize(scenario(tmp_path, idempotency, APPENDER_HANG="1"), ws)
    return ws


@pytest.mark.parametrize("how", ["killed", "timed out"])
def test_agent_cut_short_mid_turn_is_rolled_back_before_the_resend(
    tmp_path: Path, lorch: Runner, how: str
) -> None:
    ws = hanging(tmp_path, "lorch")
    if how == "killed":
        # Record 8 is the builder's progress event; the agent then hangs mid-turn.
        env = {"LORCH_CRASH_AT": "agent:8"}
    else:
        cfg = json.loads((ws / "lorch.json").read_text())
        cfg["agents"]["builder"]["timeouts_s"] = {"implement": 1}
        (ws / "lorch.json").write_text(json.dumps(cfg))
        env = {}
    r = lorch("run", "--workspace", str(ws), env=env)
    assert r.returncode == 0, r.stderr
    recs = records(ws)
    assert recs[7]["event"] == "builder.progress"
    (failed,) = events(recs, "system.command_failed")
    (rollback,) = events(recs, "system.rollback")
    assert recs.index(failed) < recs.index(rollback)
    assert rollback["payload"]["restored"] == ["effects.log"]
    assert effects_problem(ws, recs, "effects.log") is None
    work = (ws / "src" / "T-0007.txt").read_text()
    assert work == "implement round 1\nimplement_changes round 2\n"


def test_without_lorch_idempotency_a_resend_doubles_the_effect(
    tmp_path: Path, lorch: Runner
) -> None:
    ws = hanging(tmp_path, "agent")
    # Record 7 is the builder's progress event (no checkpoint record before the command).
    r = lorch("run", "--workspace", str(ws), env={"LORCH_CRASH_AT": "agent:7"})
    assert r.returncode == 0, r.stderr
    recs = records(ws)
    assert recs[6]["event"] == "builder.progress"
    assert events(recs, "system.command_failed")
    assert not events(recs, "system.checkpoint") and not events(recs, "system.rollback")
    problem = effects_problem(ws, recs, "effects.log")
    assert problem is not None and "2 times" in problem


def test_needs_checkpoints_predicate() -> None:
    from lorch.app.config import AgentConfig

    assert not AgentConfig("builder", [sys.executable]).needs_checkpoints
    assert AgentConfig("builder", [sys.executable], idempotency="lorch").needs_checkpoints
    assert AgentConfig("builder", [sys.executable], transport="acp").needs_checkpoints
