"""Exactly-once effects for an agent that is not idempotent (DESIGN.md §5.12).

The agents here (tests/agents/appender.py) redo the work of every command they
receive. With ``"idempotency": "lorch"`` the crash matrix must still find each
command's effect in the final workspace exactly once (invariant
``effects_once``) and the workspace equal to the clean run's; without it, the
same matrix must catch duplicated effects, so the invariant can fail.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from lorch.crashtest import Options, crashtest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

APPENDER = str(Path(__file__).parent.parent / "agents" / "appender.py")
MODES = ["kill", "torn", "agent", "powerloss", "double"]


def scenario(root: Path, idempotency: str) -> Path:
    """A review loop (one round of changes) run entirely by appender agents."""
    d = root / f"exactly-once-{idempotency}"
    (d / "specs").mkdir(parents=True)
    (d / "specs" / "SPEC.md").write_text("# Spec\n\nAppend, never cache.\n")

    def role(name: str, **env: str) -> dict[str, object]:
        cfg: dict[str, object] = {
            "cmd": [sys.executable, APPENDER, name],
            "idempotency": idempotency,
        }
        if env:
            cfg["env"] = env
        return cfg

    config = {
        "version": "1",
        "task": {"id": "T-0007", "goal": "append", "spec_path": "specs/SPEC.md"},
        "agents": {
            "builder": role("builder"),
            "reviewer": role("reviewer", APPENDER_CHANGES="1"),
            "spec_maintainer": role("spec_maintainer"),
        },
        "policy": {"backoff": {"initial_s": 0.02, "factor": 2, "max_s": 0.2}},
    }
    (d / "lorch.json").write_text(json.dumps(config, indent=2))
    meta = {
        "description": "Non-idempotent agents; each command appends its key to effects.log.",
        "task_id": "T-0007",
        "expected": {"status": "completed"},
        "effects_log": "effects.log",
    }
    (d / "scenario.json").write_text(json.dumps(meta, indent=2))
    return d


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
