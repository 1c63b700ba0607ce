"""Regression suite: every offset x kill, torn, agent, powerloss, double; zero failures."""

from __future__ import annotations

import pytest

from lorch.crashtest import Options, crashtest
from lorch.crashtest.harness import Result

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("crash-matrix")]


MODES = ["kill", "torn", "agent", "powerloss", "double", "corrupt"]


def assert_no_failures(results: list[Result]) -> None:
    failed = [f"{r.point.name}: {r.invariant}: {r.detail}" for r in results if r.verdict == "fail"]
    assert failed == []


@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario", ["happy-path", "review-loop", "spec-loop"])
def test_full_matrix(scenario: str) -> None:
    baseline, results = crashtest(scenario, MODES, None, Options(jobs=2))
    assert len(results) == len(MODES) * baseline.n
    assert_no_failures(results)


@pytest.mark.timeout(900)
def test_slow_agents_leave_orphans_that_resume_ends() -> None:
    # Slow agents are still working when lorch is killed: resume must end them.
    baseline, results = crashtest(
        "slow-agents", ["kill", "agent", "powerloss"], None, Options(jobs=2)
    )
    assert len(results) == 3 * baseline.n
    assert_no_failures(results)


@pytest.mark.timeout(900)
def test_agent_lying_about_sha256_is_rejected_at_every_point() -> None:
    baseline, results = crashtest(
        "artifact-lie", ["kill", "torn", "powerloss"], None, Options(jobs=2)
    )
    assert baseline.status == "failed"
    assert_no_failures(results)
