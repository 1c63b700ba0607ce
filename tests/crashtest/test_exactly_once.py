"""Exactly-once effects for an agent that is not idempotent (DESIGN.md §5.12).

The agents here (tests/agents/appender.py) redo the work of every command they
receive. With ``"idempotency": "lorch"`` the crash matrix must still find each
command's effect in the final workspace exactly once (invariant
``effects_once``) and the workspace equal to the clean run's; without it, the
same matrix must catch duplicated effects, so the invariant can fail.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from lorch.crashtest import Options, crashtest
from tests.appender_scenario import scenario

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("crash-matrix")]

MODES = ["kill", "torn", "agent", "powerloss", "double"]


@pytest.mark.timeout(1200)
def test_every_offset_every_mode_effects_exactly_once(tmp_path: Path) -> None:
    baseline, results = crashtest(scenario(tmp_path, "lorch"), MODES, None, Options(jobs=2))
    assert len(results) == len(MODES) * baseline.n
    assert any(r["event"] == "system.checkpoint" for r in baseline.records)
    failed = [f"{r.point.name}: {r.invariant}: {r.detail}" for r in results if r.verdict == "fail"]
    assert failed == []


@pytest.mark.timeout(600)
def test_without_lorch_idempotency_the_invariant_fails(tmp_path: Path) -> None:
    baseline, results = crashtest(
        scenario(tmp_path, "agent"), ["kill", "agent"], None, Options(jobs=2)
    )
    assert not any(r.get("event") == "system.checkpoint" for r in baseline.records)
    broken = {r.invariant for r in results if r.verdict == "fail"}
    assert "effects_once" in broken, [(r.point.name, r.invariant, r.detail) for r in results]
