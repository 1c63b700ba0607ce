"""Intake under crashes: two derived tasks after one clarification, scripted answers by flag."""

from __future__ import annotations

import pytest

from lorch.app.scenarios import resolve
from lorch.crashtest import Options, crashtest
from lorch.crashtest.baseline import scenario_args
from lorch.crashtest.harness import DEFAULT_MODES
from lorch.crashtest.invariants import Broken
from lorch.crashtest.verdict import check_decisions_once


def decision(question: str) -> dict[str, object]:
    return {"event": "system.user_decision", "payload": {"question": question}}


def test_decisions_once_invariant() -> None:
    check_decisions_once([decision("instruction"), decision("ik:1#plan"), {"event": "x"}])
    with pytest.raises(Broken) as e:
        check_decisions_once([decision("instruction"), decision("instruction")])
    assert e.value.invariant == "decisions_once"


def test_the_intake_scenario_scripts_its_answers() -> None:
    args = scenario_args(resolve("intake"))
    assert "--instruction" in args and "--answer" in args and "--yes" in args


@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.xdist_group("crash-matrix")
@pytest.mark.timeout(1500)
def test_full_matrix_with_intake() -> None:
    modes = list(DEFAULT_MODES)
    baseline, results = crashtest("intake", modes, None, Options(jobs=2))
    assert len(results) == len(modes) * baseline.n
    events = [r.get("event") for r in baseline.records]
    assert events.count("system.user_decision") == 4
    assert events.count("system.task_started") == 2
    failed = [f"{r.point.name}: {r.invariant}: {r.detail}" for r in results if r.verdict != "pass"]
    assert failed == [], "\n".join(failed)


@pytest.mark.e2e
@pytest.mark.slow
def test_asking_again_on_resume_is_caught() -> None:
    # Crash right after the first intake command (record 9); the planted resume
    # forgets the recorded instruction and asks it again.
    clean = crashtest("intake", ["kill"], [9], Options(jobs=1))[1]
    assert [r.verdict for r in clean] == ["pass"]
    env = {"LORCH_PLANT_BUG": "reask_on_resume"}
    _, results = crashtest("intake", ["kill"], [9], Options(jobs=1, extra_env=env))
    assert [(r.verdict, r.invariant) for r in results] == [("fail", "decisions_once")]
