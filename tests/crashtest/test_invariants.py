"""The invariants that compare a resumed run with its baseline: each one can fail.

One real run of happy-path gives a ledger and receipts; each test breaks them the
way a buggy resume would and expects exactly that invariant to name the fault.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lorch.app.scenarios import materialize
from lorch.crashtest import INVARIANTS, invariants, verdict
from lorch.crashtest.invariants import Broken
from lorch.crashtest.workspace import read_records

pytestmark = pytest.mark.e2e


def lorch(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    full["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full['PATH']}"
    return subprocess.run(
        [sys.executable, "-m", "lorch", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )


@pytest.fixture(scope="module")
def done(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = tmp_path_factory.mktemp("inv") / "ws"
    materialize("happy-path", ws)
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    return ws


@pytest.fixture
def ws(done: Path, tmp_path: Path) -> Path:
    import shutil

    dest = tmp_path / "ws"
    shutil.copytree(done, dest, symlinks=True)
    return dest


def commands(recs: list[dict[str, Any]]) -> list[int]:
    return [i for i, r in enumerate(recs) if r["kind"] == "command"]


def test_a_clean_run_passes_them_all(ws: Path) -> None:
    recs = read_records(ws)
    folded = invariants.fold(recs)
    assert [p.command["action"] for p in folded.accepted] == ["implement", "review", "update_spec"]
    invariants.check_commands_match_baseline(recs, recs)
    invariants.check_receipts_complete(ws, folded)
    invariants.check_no_stale_temp_files(ws)


def test_command_resent_after_its_answer(ws: Path) -> None:
    recs = read_records(ws)
    review = commands(recs)[1]
    # The implement command again, after its builder.completed was recorded.
    again = copy.deepcopy(recs[commands(recs)[0]])
    with pytest.raises(Broken) as e:
        invariants.fold([*recs[:review], again, *recs[review:]])
    assert e.value.invariant == "no_command_after_answer"
    assert "implement" in e.value.detail and "already in the ledger" in e.value.detail


def test_rejected_answer_may_be_resent(ws: Path) -> None:
    recs = read_records(ws)
    first = commands(recs)[0]
    terminal = next(i for i, r in enumerate(recs) if r.get("event") == "builder.completed")
    ik = recs[first]["idempotency_key"]
    rejected = {
        **recs[terminal],
        "message_id": "evt-rejected",
        "from": {"agent_type": "system", "agent_id": "lorch"},
        "event": "system.command_failed",
        "payload": {"idempotency_key": ik, "reason": "artifact rejected", "code": "x"},
    }
    rejected.pop("status", None)
    again = copy.deepcopy(recs[first])
    folded = invariants.fold(
        [
            *recs[: terminal + 1],
            rejected,
            again,
            *recs[first + 1 : terminal + 1],
            *recs[terminal + 1 :],
        ]
    )
    assert folded.accepted[0].command["action"] == "implement"


def test_commands_differ_from_baseline(ws: Path) -> None:
    recs = read_records(ws)
    resent = [*recs]
    i = commands(recs)[1]
    resent.insert(i, copy.deepcopy(recs[i]))  # a resend of the pending command: fine
    invariants.check_commands_match_baseline(resent, recs)
    other = copy.deepcopy(recs)
    other[i]["idempotency_key"] = "ik:" + "0" * 64
    with pytest.raises(Broken) as e:
        invariants.check_commands_match_baseline(other, recs)
    assert e.value.invariant == "commands_match_baseline"
    assert e.value.detail.startswith("command 2 of the resumed run is review (ik:000000000000000")
    with pytest.raises(Broken, match="command 3 of the resumed run is nothing"):
        invariants.check_commands_match_baseline(recs[: commands(recs)[2]], recs)


def test_missing_extra_and_gapped_receipts(ws: Path) -> None:
    recs = read_records(ws)
    folded = invariants.fold(recs)
    receipts = sorted((ws / "receipts" / "T-0042").glob("step-*.json"))
    assert [p.name for p in receipts] == ["step-1.json", "step-2.json", "step-3.json"]
    last = receipts[-1].read_bytes()
    receipts[-1].unlink()
    with pytest.raises(Broken, match=r"accepted command update_spec .* has 0 receipts"):
        invariants.check_receipts_complete(ws, folded)
    (ws / "receipts/T-0042/step-4.json").write_bytes(last)
    with pytest.raises(Broken, match=r"step-4\.json says step 3 inside"):
        invariants.check_receipts_complete(ws, folded)
    body = json.loads(last)
    (ws / "receipts/T-0042/step-4.json").write_text(json.dumps({**body, "step": 4}))
    with pytest.raises(Broken, match="not dense: 3 receipts, a gap before step 4"):
        invariants.check_receipts_complete(ws, folded)
    (ws / "receipts/T-0042/step-3.json").write_text(json.dumps({**body, "step": 3}))
    with pytest.raises(Broken, match=r"update_spec .* has 2 receipts"):
        invariants.check_receipts_complete(ws, folded)


def test_stale_temp_file(ws: Path) -> None:
    (ws / "state" / ".run.json.tmp-123-deadbeef").write_bytes(b"{")
    with pytest.raises(Broken, match=r"state/\.run\.json\.tmp-123-deadbeef left behind"):
        invariants.check_no_stale_temp_files(ws)


def test_resume_removes_stale_temp_files(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    materialize("happy-path", ws)
    r = lorch("run", "--workspace", str(ws), env={"LORCH_CRASH_AT": "after:9"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    (ws / "state").mkdir(exist_ok=True)
    (ws / "state" / ".run.json.tmp-123-deadbeef").write_bytes(b"{")
    for sub in ("receipts/T-0042", "transcripts"):
        (ws / sub).mkdir(parents=True, exist_ok=True)
        (ws / sub / ".x.tmp-9-0badf00d").write_bytes(b"")
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    invariants.check_no_stale_temp_files(ws)


def test_snapshot_recorded_twice_or_another_one(ws: Path) -> None:
    recs = read_records(ws)
    invariants.check_snapshot_once(recs, recs)
    snap = next(r for r in recs if r.get("event") == "system.snapshot")
    # A resume that took a snapshot of its own: the reducer ignores it, the ledger does not.
    again = copy.deepcopy(snap)
    again["payload"]["snapshot_id"] = "snap-000000000000"
    resumed = [*recs[:-1], again, recs[-1]]
    with pytest.raises(Broken) as e:
        invariants.check_snapshot_once(resumed, recs)
    assert e.value.invariant == "snapshot_once"
    assert "records 2 snapshots" in e.value.detail
    # The same snapshot recorded again is a second snapshot all the same.
    with pytest.raises(Broken, match="records 2 snapshots"):
        invariants.check_snapshot_once([*recs, copy.deepcopy(snap)], recs)
    other = [again if r is snap else r for r in recs]
    with pytest.raises(Broken, match="snapshot is snap-000000000000, the baseline's snap-"):
        invariants.check_snapshot_once(other, recs)


def test_receipt_rewritten_or_removed_by_resume(ws: Path) -> None:
    before = invariants.receipt_files(ws)
    assert len(before) == 3
    invariants.check_receipts_write_once(ws, before)
    first = ws / sorted(before)[0]
    body = json.loads(first.read_text())
    body["completed_at"] = "2030-01-01T00:00:00Z"
    first.write_text(json.dumps(body))
    with pytest.raises(Broken) as e:
        invariants.check_receipts_write_once(ws, before)
    assert e.value.invariant == "receipts_write_once"
    assert e.value.detail == f"{sorted(before)[0]} was rewritten by resume"
    first.unlink()
    with pytest.raises(Broken, match="was there before resume, gone after"):
        invariants.check_receipts_write_once(ws, before)


def test_a_receipt_put_in_place_by_rename_is_reported() -> None:
    from lorch.crashtest import strace, syscalls

    # root(1) holds receipts(2) holding T(3); a receipt temp file (4) is written,
    # synced, and linked into place (write-once), then another (5) renamed into place.
    root = strace.Inode(1, True, entries={"receipts": 2})
    initial = {1: root, 2: strace.Inode(2, True, entries={"T": 3}), 3: strace.Inode(3, True)}
    linked = [
        strace.Op("entry", 3, entry=("link", ".step-1.json.tmp-1-ab", 4, 0, "")),
        strace.Op("write", 4, data=b"{}"),
        strace.Op("fsync", 4),
        strace.Op("entry", 3, entry=("link", "step-1.json", 4, 0, "")),
        strace.Op("entry", 3, entry=("unlink", ".step-1.json.tmp-1-ab", 0, 0, "")),
        strace.Op("dirsync", 3),
    ]
    assert syscalls.receipt_rewrites(strace.Trace(1, initial, linked, Path("/nowhere"))) == []
    renamed = [
        *linked,
        strace.Op("entry", 3, entry=("link", ".step-2.json.tmp-1-cd", 5, 0, "")),
        strace.Op("write", 5, data=b"{}"),
        strace.Op("entry", 3, entry=("rename", "step-2.json", 5, 3, ".step-2.json.tmp-1-cd")),
        strace.Op("write", 4, offset=2, data=b"\n"),
        strace.Op("entry", 3, entry=("unlink", "step-1.json", 0, 0, "")),
    ]
    got = syscalls.receipt_rewrites(strace.Trace(1, initial, renamed, Path("/nowhere")))
    assert got == [
        (8, "receipts/T/step-2.json was put in place by a rename, which replaces a taken name"),
        (9, "receipts/T/step-1.json was written after it was in place"),
        (10, "receipts/T/step-1.json was removed"),
    ]


def test_an_unreadable_receipt_in_a_crash_state_is_a_verdict(ws: Path) -> None:
    invariants.check_receipts_before_end(ws)
    (ws / sorted(invariants.receipt_files(ws))[0]).write_bytes(b"")  # name kept, data lost
    with pytest.raises(Broken) as e:
        invariants.check_receipts_before_end(ws)
    assert e.value.invariant == "receipts_before_end"
    assert "step-1.json: not a JSON document" in e.value.detail, e.value.detail


def test_every_check_after_resume_is_a_published_invariant() -> None:
    names = [name for name, _ in verdict.AFTER_RESUME]
    assert len(set(names)) == len(names)
    # The rest are checked on the crash itself, or by the corrupt mode.
    before = {"write_ahead", "ledger_replays", "receipts_before_end", "stops_on_corruption"}
    assert set(INVARIANTS) == set(names) | before and not before & set(names)
