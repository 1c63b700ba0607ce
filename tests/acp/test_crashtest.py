"""The crash matrix over a scenario with ACP roles (issue 12, point 8).

Builder and reviewer of ``acp-crash`` are the scripted ACP agent, whose every
turn appends a line to ``journal.txt``: work that is not idempotent. Killed at
every ledger offset in every mode and resumed, the run must end with the clean
run's workspace, so each command's effect is in it exactly once.
"""

from __future__ import annotations

import pytest

from lorch.crashtest.harness import DEFAULT_MODES, Options, crashtest

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.slow,
    pytest.mark.timeout(3600),
    pytest.mark.xdist_group("crash-matrix"),
]


def test_acp_scenario_survives_a_crash_at_every_offset_in_every_mode() -> None:
    baseline, results = crashtest("acp-crash", DEFAULT_MODES, opts=Options(jobs=2))
    assert len(results) == baseline.n * len(DEFAULT_MODES)
    # Its builder's permission decisions are records: a crash point each, too.
    decided = [r["payload"] for r in baseline.records if r.get("event") == "system.permission"]
    assert [(d["kind"], d["allowed"]) for d in decided] == [("edit", True), ("fetch", False)]
    failed = [(r.point.name, r.invariant, r.detail) for r in results if r.verdict != "pass"]
    assert failed == []
