"""One layout module: every path of the workspace, and the one rule for "which run"."""

from __future__ import annotations

import os
from pathlib import Path

from lorch.store import layout


def _ledger(ws: Path, run_id: str, mtime_ns: int) -> None:
    path = layout.ledger(ws, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("")
    os.utime(path, ns=(mtime_ns, mtime_ns))


def test_runs_are_newest_first_by_start_second_then_last_write(tmp_path: Path) -> None:
    _ledger(tmp_path, "run-20260101T000002Z-aaaa", 1_000)
    _ledger(tmp_path, "run-20260101T000001Z-zzzz", 9_000)
    # Same second: the one written last is the newer.
    _ledger(tmp_path, "run-20260101T000002Z-bbbb", 500)
    assert [p.stem for p in layout.runs(tmp_path)] == [
        "run-20260101T000002Z-aaaa",
        "run-20260101T000002Z-bbbb",
        "run-20260101T000001Z-zzzz",
    ]
    assert layout.latest_run(tmp_path) == "run-20260101T000002Z-aaaa"


def test_no_runs(tmp_path: Path) -> None:
    assert layout.runs(tmp_path) == []
    assert layout.latest_run(tmp_path) is None
    (tmp_path / "events").mkdir()
    (tmp_path / "events" / "notes.txt").write_text("")
    assert layout.latest_run(tmp_path) is None


def test_paths_agree_with_what_records_name(tmp_path: Path) -> None:
    run = "run-20260101T000000Z-abcd"
    assert layout.ledger(tmp_path, run) == tmp_path / layout.ledger_rel(run)
    assert layout.head(layout.ledger(tmp_path, run)) == tmp_path / "state/heads" / f"{run}.json"
    assert layout.transcript(tmp_path, run) == tmp_path / "transcripts" / f"{run}.txt"
    assert layout.receipts(tmp_path, "t1") == tmp_path / "receipts" / "t1"
    assert set(layout.LORCH_DIRS) >= {"events", "state", "receipts", "logs"}
