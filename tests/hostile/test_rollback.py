"""Rollback that only undoes the turn (issue 22, point 4), sandbox off.

A real lorch runs a builder of our own (tests/agents/rollback_agent.py) that
lorch makes exactly-once; its first turn attacks, then dies, so lorch rolls the
turn back before it sends the command again. What must hold afterwards: the
user's ignored files are where they were, what the turn made is gone (even
behind ignore rules of its own), nothing the agent planted in the checkpoint
store ever ran, and lorch.json's secrets are in no checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import records

pytestmark = pytest.mark.e2e

AGENTS = Path(__file__).parent.parent / "agents"
REVIEWER_KEY = "rv-Secret-Key-3f9a1c77e2"


def workspace(tmp_path: Path, attack: str, **builder_env: str) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / ".gitignore").write_text("*.db\n")
    (ws / "data").mkdir()
    (ws / "data/local.db").write_text("the user's rows, never checkpointed\n")
    (ws / "src").mkdir()
    (ws / "src/app.py").write_text("print('app')\n")

    def simple(role: str, **env: str) -> dict[str, Any]:
        cfg: dict[str, Any] = {
            "cmd": [sys.executable, str(AGENTS / "simple_agent.py"), role],
            "heartbeat_interval_s": 0.5,
        }
        if env:
            cfg["env"] = env
        return cfg

    config = {
        "version": "1",
        "task": {"id": "T-0022", "goal": "build it"},
        "agents": {
            "builder": {
                "cmd": [sys.executable, str(AGENTS / "rollback_agent.py"), attack],
                "idempotency": "lorch",
                "heartbeat_interval_s": 0.5,
                "env": builder_env,
            },
            "reviewer": simple("reviewer", REVIEWER_API_KEY=REVIEWER_KEY),
            "spec_maintainer": simple("spec_maintainer"),
        },
        "policy": {"backoff": {"initial_s": 0.01, "factor": 2, "max_s": 0.05}},
    }
    (ws / "lorch.json").write_text(json.dumps(config))
    return ws


def rollbacks(ws: Path) -> list[dict[str, Any]]:
    return [r["payload"] for r in records(ws) if r.get("event") == "system.rollback"]


def run(lorch: Any, ws: Path) -> None:
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    assert (ws / "rb/T-0022.txt").read_text() == "# T-0022 round 1\n"
    assert len(rollbacks(ws)) == 1, "the failed turn was rolled back once"


def test_a_turn_that_unignores_the_users_files_and_fails_leaves_them_alone(
    tmp_path: Path, lorch: Any
) -> None:
    ws = workspace(tmp_path, "gitignore")
    run(lorch, ws)
    assert (ws / "data/local.db").read_text() == "the user's rows, never checkpointed\n"
    assert (ws / ".gitignore").read_text() == "*.db\n", "the ignore rules are the user's again"
    assert not (ws / "data/.gitignore").exists()
    assert not (ws / "turn-made.txt").exists()
    (rb,) = rollbacks(ws)
    assert rb["restored"] == [".gitignore", "data/.gitignore", "turn-made.txt"]


def test_what_a_failed_turn_hid_behind_rules_of_its_own_is_removed(
    tmp_path: Path, lorch: Any
) -> None:
    ws = workspace(tmp_path, "hide")
    run(lorch, ws)
    assert (ws / ".gitignore").read_text() == "*.db\n"
    assert not (ws / "hidden").exists() and not (ws / "x.log").exists()
    assert (ws / "data/local.db").exists()
    (rb,) = rollbacks(ws)
    assert rb["restored"] == [".gitignore", "hidden/payload.txt", "x.log"]


@pytest.mark.parametrize("attack", ["plant", "plant_commondir"])
def test_config_hooks_filters_and_alternates_planted_in_the_store_never_run(
    tmp_path: Path, lorch: Any, attack: str
) -> None:
    """The agent writes the checkpoint store itself (no sandbox hides it):
    lorch's git reads none of it, before and after the rollback."""
    marker = tmp_path / "tripwire-ran"
    tripwire = tmp_path / "tripwire.sh"
    tripwire.write_text(f'#!/bin/sh\necho "$0 $*" >> "{marker}"\ncat\n')
    tripwire.chmod(0o755)
    outside = tmp_path / "outside"
    (outside / "objects").mkdir(parents=True)
    ws = workspace(tmp_path, attack, ROLLBACK_TRIPWIRE=str(tripwire), ROLLBACK_OUTSIDE=str(outside))
    run(lorch, ws)
    assert not marker.exists(), f"lorch's git ran what the agent planted: {marker.read_text()}"
    assert not (ws / ".gitattributes").exists() and not (ws / "turn-made.txt").exists()
    store = ws / "state/checkpoints.git"
    for rel in ("config", "hooks", "info", "commondir", "objects/info/alternates"):
        assert not (store / rel).exists(), f"{rel} is still in the store"
    assert list((outside / "objects").iterdir()) == [], "objects were written elsewhere"
    assert not (outside / "index").exists()
    # The checkpoints hold the bytes on disk, not a filter's output.
    assert b"# T-0022 round 1\n" in objects(store)


def test_lorch_json_and_its_secrets_are_in_no_checkpoint(tmp_path: Path, lorch: Any) -> None:
    ws = workspace(tmp_path, "gitignore")
    run(lorch, ws)
    data = objects(ws / "state/checkpoints.git")
    assert b"print('app')" in data, "the store holds the workspace"
    assert REVIEWER_KEY.encode() not in data
    assert b"the user's rows" not in data, "an ignored file reached the store"
    for r in records(ws):
        if r.get("event") in ("system.checkpoint", "system.rollback"):
            listed = r["payload"].get("changed", []) + r["payload"].get("restored", [])
            assert "lorch.json" not in listed


def objects(store: Path) -> bytes:
    """Every object of the store, decompressed."""
    env = {"PATH": os.environ["PATH"], "GIT_DIR": str(store), "GIT_CONFIG_NOSYSTEM": "1"}
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    return subprocess.run(
        ["git", "cat-file", "--batch-all-objects", "--batch"],
        env=env,
        capture_output=True,
        check=True,
    ).stdout
