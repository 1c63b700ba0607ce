"""mockagent is compatible with the original Go mock agent: its flags and its fixtures."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .driver import Agent, command

pytestmark = pytest.mark.e2e


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    d = tmp_path / "ws"
    d.mkdir()
    return d


def test_the_original_single_dash_flags(mockagent_bin: str, ws: Path) -> None:
    fx = ws / "f.json"
    fx.write_text(
        json.dumps({"responses": {"implement": {"events": [{"type": "builder.completed"}]}}})
    )
    a = Agent(mockagent_bin, ws, "-type", "builder", "-script", str(fx), "-no-heartbeat")
    a.send(command())
    assert [e["event"] for e in a.events()] == ["builder.completed"]
    assert a.close() == 0
    assert not any(b'"heartbeat"' in line for line in a.lines)
    # -review-changes-count N: rounds 1..N request changes; -id and a Go duration.
    a = Agent(
        mockagent_bin,
        ws,
        "-type=reviewer",
        "-review-changes-count",
        "1",
        "-id",
        "reviewer#7",
        "-heartbeat-interval",
        "1m30s",
    )
    for rnd, status in ((1, "changes_requested"), (2, "approved")):
        a.send(command("review", role="reviewer", inputs={"round": rnd}))
        ev = a.events()[-1]
        assert (ev["status"], ev["from"]["agent_id"]) == (status, "reviewer#7")
    assert a.close() == 0


def test_a_bad_duration_is_refused(mockagent_bin: str, ws: Path) -> None:
    r = subprocess.run(
        [mockagent_bin, "-type", "builder", "-heartbeat-interval", "10x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "'10x' is not a duration" in r.stderr


def test_no_files_writes_nothing(mockagent_bin: str, ws: Path) -> None:
    for role, action in (
        ("builder", "implement"),
        ("reviewer", "review"),
        ("spec_maintainer", "update_spec"),
    ):
        a = Agent(mockagent_bin, ws, "--type", role, "--no-files")
        a.send(command(action, role=role))
        evs = a.events()
        assert a.close() == 0
        assert not any("artifacts" in e for e in evs)
    assert sorted(p.name for p in ws.iterdir()) == [".mockagent"]
