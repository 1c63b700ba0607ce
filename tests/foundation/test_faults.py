"""Test hooks reach lorch as one injected object, built once at the entry point."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from lorch.store import faults
from lorch.store.failpoint import Failpoint
from lorch.store.faults import BUGS, NO_FAULTS, AgentGroups, Faults
from lorch.wire.errors import UsageError

LORCH = Path(faults.__file__).resolve().parents[1]


def test_an_empty_environment_asks_for_no_fault() -> None:
    found = Faults.from_env({})
    assert found.crash is None and found.planted == frozenset()
    assert not any(found.planted_bug(bug) for bug in BUGS)
    assert not any(NO_FAULTS.planted_bug(bug) for bug in BUGS)


def test_the_environment_names_the_crash_point_and_the_bugs() -> None:
    found = Faults.from_env(
        {"LORCH_CRASH_AT": "agent:7", "LORCH_PLANT_BUG": "no_torn_cut,,new_key_on_resend"}
    )
    assert found.crash == Failpoint("agent", 7)
    assert found.planted_bug("no_torn_cut") and found.planted_bug("new_key_on_resend")
    assert not found.planted_bug("skip_command_fsync")


def test_a_bad_crash_point_is_one_usage_error() -> None:
    with pytest.raises(UsageError, match=r"^LORCH_CRASH_AT='torn:x': expected MODE:K"):
        Faults.from_env({"LORCH_CRASH_AT": "torn:x"})


def test_a_bug_lorch_does_not_plant_is_a_programming_error() -> None:
    with pytest.raises(AssertionError):
        NO_FAULTS.planted_bug("no_such_bug")


def test_agent_groups_are_kept_only_for_a_crash_point_that_kills_agents() -> None:
    assert Faults.from_env({"LORCH_CRASH_AT": "agent:3"}).agents.tracking
    assert Faults.from_env({"LORCH_CRASH_AT": "powerloss:3"}).agents.tracking
    assert not Faults.from_env({"LORCH_CRASH_AT": "after:3"}).agents.tracking
    NO_FAULTS.agents.started("builder", 4242)
    assert NO_FAULTS.agents.all() == []  # the null object keeps nothing


def test_the_agent_at_work_is_the_one_an_agent_crash_point_kills() -> None:
    groups = AgentGroups(tracking=True)
    groups.started("builder", 100)
    groups.started("reviewer", 200)
    assert groups.busy() == []
    with groups.working("reviewer"):
        assert groups.busy() == [200]
    assert groups.busy() == []
    groups.forgot("builder", 999)  # a successor's group: kept
    groups.forgot("reviewer", 200)
    assert groups.all() == [100]


def _calls(path: Path, name: str) -> list[int]:
    tree = ast.parse(path.read_text())
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == name
        and isinstance(node.func.value, ast.Name)
        and node.func.value.id == "Faults"
    ]


def test_faults_are_built_from_the_environment_only_at_the_entry_point() -> None:
    builders = {
        str(p.relative_to(LORCH)): lines
        for p in sorted(LORCH.rglob("*.py"))
        if (lines := _calls(p, "from_env"))
    }
    assert set(builders) == {"app/runner.py"}, builders
    # Nothing else reads the variables: the names appear in faults.py, failpoint.py
    # (the crash point's parser) and launch.py (kept out of agents' environments).
    readers = {
        str(p.relative_to(LORCH))
        for p in LORCH.rglob("*.py")
        if "LORCH_PLANT_BUG" in p.read_text() or "PLANT_ENV" in p.read_text()
    }
    assert readers == {"store/faults.py", "app/launch.py"}, readers
