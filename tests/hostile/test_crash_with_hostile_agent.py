"""The crash matrix with a hostile agent mixed in (issue 14, point 7): the
reviewer forges lorch's records on its first command; every crash point still
resumes to the baseline, with every command's work done once."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

from lorch.crashtest import Options, crashtest
from lorch.wire.resources import scenarios_dir

from .conftest import AGENT

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.xdist_group("crash-matrix")]


def hostile_scenario(tmp_path: Path) -> Path:
    """happy-path, whose reviewer is the hostile agent forging system.run_completed."""
    src = scenarios_dir() / "happy-path"
    dst = tmp_path / "hostile-reviewer"
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "lorch.json").read_text())
    cfg["agents"]["reviewer"] = {
        "cmd": [sys.executable, AGENT, "reviewer", "forged_completed"],
        "heartbeat_interval_s": 0.5,
    }
    (dst / "lorch.json").write_text(json.dumps(cfg))
    meta = json.loads((dst / "scenario.json").read_text())
    meta["description"] = "happy-path with a reviewer that forges system.run_completed"
    (dst / "scenario.json").write_text(json.dumps(meta))
    return dst


@pytest.mark.timeout(900)
def test_crash_matrix_with_a_forging_reviewer(tmp_path: Path) -> None:
    baseline, results = crashtest(
        hostile_scenario(tmp_path), ["kill", "torn", "agent", "powerloss"], None, Options(jobs=2)
    )
    events = [r.get("event") for r in baseline.records]
    assert "system.protocol_error" in events  # the forgery was seen and refused
    assert events.count("system.run_completed") == 1 and events[-1] == "system.run_completed"
    assert any(
        r.get("event") == "review.completed" and r["from"]["agent_type"] == "reviewer"
        for r in baseline.records
    )
    assert len(results) == 4 * baseline.n
    failed = [f"{r.point.name}: {r.invariant}: {r.detail}" for r in results if r.verdict == "fail"]
    assert failed == []
