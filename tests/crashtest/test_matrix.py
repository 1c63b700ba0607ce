"""Regression suite: every offset x kill, torn, agent, powerloss, double; zero failures."""

from __future__ import annotations

import pytest

from lorch.crashtest import Options, crashtest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


@pytest.mark.timeout(900)
@pytest.mark.parametrize("scenario", ["happy-path", "review-loop", "spec-loop"])
def test_full_matrix(scenario: str) -> None:
    baseline, results = crashtest(
        scenario, ["kill", "torn", "agent", "powerloss", "double"], None, Options(jobs=2)
    )
    assert len(results) == 5 * baseline.n
    failed = [f"{r.point.name}: {r.invariant}: {r.detail}" for r in results if r.verdict == "fail"]
    assert failed == []
