"""Tidy state (issue 14, point 6): private modes whatever the umask, stale temp
files swept, artifacts that are files of their own."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorch.app.scenarios import materialize
from lorch.store import atomic, failpoint
from lorch.store import derived_files as store
from lorch.store.paths import links_problem
from lorch.wire.checksum import sha256_file_stat
from lorch.wire.errors import UsageError


@pytest.fixture(params=[0o000, 0o022, 0o277])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_lorch_files_and_dirs_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    atomic.ensure_dir(tmp_path / "a" / "b")
    assert mode(tmp_path / "a") == mode(tmp_path / "a" / "b") == 0o700
    atomic.atomic_write_json(tmp_path / "a" / "x.json", {"x": 1})
    assert mode(tmp_path / "a" / "x.json") == 0o600
    store.write_receipts(
        tmp_path,
        [
            {
                "run_id": "run-20261201-000000-abcdef01",
                "task_id": "T-1",
                "action": "implement",
                "agent_type": "builder",
                "idempotency_key": "ik:" + "0" * 64,
                "correlation_id": "corr-T-1-1",
                "command_message_id": "cmd-1",
                "snapshot_id": "snap-0123456789ab",
                "terminal_event": "builder.completed",
                "event_ids": ["evt-1"],
                "artifacts": [],
                "completed_at": "2026-12-01T00:00:00Z",
            }
        ],
    )
    assert mode(tmp_path / "receipts") == mode(tmp_path / "receipts" / "T-1") == 0o700
    assert mode(tmp_path / "receipts" / "T-1" / "step-1.json") == 0o600


def test_a_scenario_is_copied_private(tmp_path: Path, umask: int) -> None:
    src = tmp_path / "scn"
    (src / "fixtures").mkdir(parents=True)
    (src / "scenario.json").write_text('{"task_id": "T-1", "expected": {}}')
    (src / "lorch.json").write_text("{}")
    (src / "fixtures" / "b.json").write_text("{}")
    (src / "agent.sh").write_text("#!/bin/sh\n")
    os.chmod(src / "agent.sh", 0o755)
    os.chmod(src / "lorch.json", 0o666)
    ws = tmp_path / "ws"
    materialize(src, ws)
    assert mode(ws) == mode(ws / "fixtures") == 0o700
    assert mode(ws / "lorch.json") == mode(ws / "fixtures" / "b.json") == 0o600
    assert mode(ws / "agent.sh") == 0o700  # still runs, still private
    assert not (ws / "scenario.json").exists()


def test_stale_temp_files_are_swept_and_nothing_else(tmp_path: Path) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "receipts" / "T-1").mkdir(parents=True)
    stale = [
        tmp_path / "state" / ".run.json.tmp-123-0a1b2c3d",
        tmp_path / "receipts" / "T-1" / ".step-4.json.tmp-9-ffffffff",
        tmp_path / "state" / ".index.json.tmp-77",  # the older transcript-style name
    ]
    kept = [
        tmp_path / "state" / "run.json",
        tmp_path / "state" / ".hidden",
        tmp_path / "state" / ".run.json.tmp-x",
        tmp_path / "receipts" / "T-1" / "step-1.json",
    ]
    for p in stale + kept:
        p.write_text("x")
    removed = atomic.remove_stale_temps([tmp_path / "state", tmp_path / "receipts"])
    assert sorted(removed) == sorted(stale)
    assert all(p.exists() for p in kept) and not any(p.exists() for p in stale)


def test_artifact_links(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    (ws / "d").mkdir(parents=True)
    own = ws / "d" / "own.txt"
    own.write_text("mine")
    assert links_problem(ws, sha256_file_stat(own)[2]) is None
    outside = tmp_path / "outside.txt"
    outside.write_text("theirs")
    os.link(outside, ws / "d" / "linked.txt")
    problem = links_problem(ws, sha256_file_stat(ws / "d" / "linked.txt")[2])
    assert problem is not None and "hard link" in problem
    os.link(own, ws / "twin.txt")  # two names, both in the workspace
    assert links_problem(ws, sha256_file_stat(own)[2]) is None


def test_io_fault_spec() -> None:
    fault = failpoint.parse_io_fault("EROFS:receipts/:2")
    fault.check("/w/state/run.json")
    fault.check("/w/receipts/T/step-1.json")  # the first: passes
    with pytest.raises(OSError, match="Read-only file system") as err:
        fault.check("/w/receipts/T/step-2.json")
    assert err.value.filename == "/w/receipts/T/step-2.json"
    for bad in ("EROFS", "NOPE:x", "EIO:", "EIO:x:y"):
        with pytest.raises(UsageError, match="LORCH_IO_FAULT"):
            failpoint.parse_io_fault(bad)


def test_an_orphan_is_ended_only_while_its_start_time_matches() -> None:
    import subprocess
    import sys

    from lorch.agents import procs

    p = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True
    )
    try:
        started = procs.start_time(p.pid)
        assert started is not None
        # Same pid and group, another start time: a recycled pid, left alone.
        assert not procs.kill_orphan(p.pid, p.pid, started=started + 1)
        assert p.poll() is None
        assert procs.kill_orphan(p.pid, p.pid, started=started)
        assert not procs.group_alive(p.pid, p.pid)
    finally:
        p.kill()
        p.wait()
