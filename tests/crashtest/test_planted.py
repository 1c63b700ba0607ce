"""The harness must be able to fail: each planted bug is caught, by the right invariant."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lorch.crashtest import Options, crashtest
from lorch.wire.resources import scenarios_dir

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# happy-path records: 3-5 agents started, 6 command implement, 7 artifact.produced,
# 9 builder.progress, 10 builder.completed, 11 command review.


def variant(tmp_path: Path, change: dict[str, Any]) -> Path:
    """A copy of happy-path with the builder fixture's implement response changed."""
    import shutil

    dest = tmp_path / "scenario"
    shutil.copytree(scenarios_dir() / "happy-path", dest)
    fx = dest / "fixtures" / "builder.json"
    body = json.loads(fx.read_text())
    body.update(change.pop("top", {}))
    body["responses"]["implement"].update(change)
    fx.write_text(json.dumps(body))
    return dest


def failures(
    scenario: str | Path, modes: list[str], offsets: list[int], bug: str | None = None
) -> dict[str, str]:
    env = {"LORCH_PLANT_BUG": bug} if bug else {}
    _, results = crashtest(scenario, modes, offsets, Options(jobs=2, extra_env=env))
    return {r.point.name: r.invariant for r in results if r.verdict == "fail"}


@pytest.mark.parametrize(
    ("bug", "modes", "offsets", "invariant"),
    [
        ("new_key_on_resend", ["kill"], [6, 7], "one_key_per_command"),
        # Power fails at the first event after a command: an agent has begun work
        # the ledger never kept.
        ("skip_command_fsync", ["powerloss"], [7, 12], "write_ahead"),
        ("receipt_before_ledger", ["torn"], [10], "receipts_match"),
        ("no_torn_cut", ["torn"], [7, 10], "ledger_replays"),
    ],
)
def test_planted_orchestrator_bug_is_caught(
    bug: str, modes: list[str], offsets: list[int], invariant: str
) -> None:
    assert failures("happy-path", modes, offsets) == {}  # the same points pass without the bug
    found = failures("happy-path", modes, offsets, bug)
    assert found, f"{bug} was not caught"
    assert set(found.values()) == {invariant}, found


def unsandboxed(scenario: Path) -> Path:
    """``scenario`` with every role out of the sandbox: sandboxed agents die with
    lorch (tests/hostile/test_sandbox.py), leaving no orphan for resume to end."""
    path = scenario / "lorch.json"
    config = json.loads(path.read_text())
    for role in config["agents"].values():
        role["sandbox"] = "none"
    path.write_text(json.dumps(config))
    return scenario


def test_orphaned_agents_left_running_are_caught(tmp_path: Path) -> None:
    # The builder reports progress, then works 1.5 s more: a crash at the progress
    # record (9) leaves it busy, and only resume can end it.
    slow = variant(
        tmp_path,
        {
            "events": [
                {"type": "builder.progress", "payload": {"message": "halfway"}},
                {
                    "type": "builder.completed",
                    "status": "success",
                    "delay_ms": 1500,
                    "payload": {"tests": {"status": "pass", "summary": "1 passed"}},
                },
            ]
        },
    )
    unsandboxed(slow)
    assert failures(slow, ["kill"], [9]) == {}
    assert failures(slow, ["kill"], [9], "no_orphan_kill") == {"kill@9": "orphans_ended"}


def test_orphans_of_the_slow_agents_scenario_are_caught(tmp_path: Path) -> None:
    # Record 9 is the builder's progress report; it then works 1.5 s more.
    import shutil

    slow = unsandboxed(Path(shutil.copytree(scenarios_dir() / "slow-agents", tmp_path / "slow")))
    assert failures(slow, ["kill"], [9]) == {}
    assert failures(slow, ["kill"], [9], "no_orphan_kill") == {"kill@9": "orphans_ended"}


def test_agent_that_redoes_work_is_caught(tmp_path: Path) -> None:
    redo = variant(tmp_path, {"top": {"misbehave": {"redo_on_repeat": True}}})
    found = failures(redo, ["kill"], [7, 8])
    assert found and set(found.values()) == {"no_duplicate_work"}, found
