"""``lorch rewind`` and ``lorch status --run`` over a finished ACP run's checkpoints (issue 25.6).

The run is the scripted ACP agents' scenario (every turn appends a line to its
role's journal, so each checkpoint is told apart by its journals), run once per
module in a workspace that is also a git repository of the user's and holds a
file its ``.gitignore`` ignores; each test rewinds a copy.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lorch.app.scenarios import materialize
from lorch.store import ledger
from lorch.store.storegit import EXCLUDED, EXCLUDED_FILES

from .conftest import Runner, run_ids

pytestmark = pytest.mark.e2e

SCENARIO = "acp-exactly-once"
QUIET = ("LORCH_CRASH_AT", "LORCH_PLANT_BUG", "LORCH_IO_FAULT")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, lorch_bin: str) -> Path:
    ws = tmp_path_factory.mktemp("rewind") / "ws"
    materialize(SCENARIO, ws)
    (ws / ".gitignore").write_text("*.db\n")
    (ws / "data").mkdir()
    (ws / "data/local.db").write_text("the user's rows\n")
    git = {"GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1", "PATH": os.environ["PATH"]}
    subprocess.run(["git", "init", "-q", str(ws)], check=True, env=git)
    r = subprocess.run(
        [lorch_bin, "run", "--workspace", str(ws)],
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k not in QUIET},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return ws


@pytest.fixture
def ws(finished: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "ws"
    shutil.copytree(finished, copy, symlinks=True)
    return copy


def run_id(ws: Path) -> str:
    (rid,) = run_ids(ws)
    return rid


def rewind_records(ws: Path) -> list[dict[str, Any]]:
    path = ws / "events" / f"{run_id(ws)}.ndjson"
    return [r["payload"] for r in ledger.read(path) if r.get("event") == "system.rewind"]


def journal(ws: Path, role: str) -> int:
    path = ws / "journal" / f"{role}.txt"
    return len(path.read_text().splitlines()) if path.exists() else 0


def users_files(ws: Path) -> dict[str, str]:
    """What a rewind may change: every file but lorch's own, ``.git`` included (by digest)."""
    out = {}
    for path in sorted(ws.rglob("*")):
        rel = path.relative_to(ws).as_posix()
        if rel.split("/")[0] in EXCLUDED or rel in EXCLUDED_FILES or not path.is_file():
            continue
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def dot_git(ws: Path) -> dict[str, tuple[str, int]]:
    return {
        p.relative_to(ws).as_posix(): (
            hashlib.sha256(p.read_bytes()).hexdigest(),
            p.stat().st_mtime_ns,
        )
        for p in sorted((ws / ".git").rglob("*"))
        if p.is_file()
    }


def test_status_lists_each_step_with_the_files_its_turn_changed(ws: Path, lorch: Runner) -> None:
    r = lorch("status", "--workspace", str(ws), "--run", run_id(ws))
    assert r.returncode == 0, r.stderr
    out = r.stdout
    timeline, _, listing = out.partition("steps to rewind to")
    assert "status: completed" in timeline
    blocks = listing.split("\n  corr-")[1:]
    assert [b.split()[0] for b in blocks] == [f"T-0042-{n}" for n in range(1, 6)]
    first = blocks[0]
    assert "implement" in first and "builder" in first and "3 file(s) changed" in first
    for rel in ("journal/builder.txt", "src/greeting.py", "tests/test_greeting.py"):
        assert f"\n      {rel}" in first
    assert "spec_notes/T-0042.json" in blocks[4] and "specs/SPEC.md" in blocks[4]


def test_rewind_to_before_a_step_then_undo(ws: Path, lorch: Runner) -> None:
    rid = run_id(ws)
    (ws / "notes.txt").write_text("written after the run\n")
    (ws / "data/local.db").write_text("the user's rows, changed since\n")
    before, git = users_files(ws), dot_git(ws)

    r = lorch("rewind", "--workspace", str(ws), "--run", rid, "--to", "corr-T-0042-3")
    assert r.returncode == 0, r.stderr
    # Before the second implement: one builder turn and one review done.
    assert (journal(ws, "builder"), journal(ws, "reviewer"), journal(ws, "spec_maintainer")) == (
        1,
        1,
        0,
    )
    review = json.loads((ws / "reviews/T-0042.json").read_text())
    assert review["status"] == "changes_requested"
    assert not (ws / "spec_notes/T-0042.json").exists()
    assert not (ws / "notes.txt").exists(), "made after the checkpoint, not ignored: removed"
    assert (ws / "data/local.db").read_text() == "the user's rows, changed since\n"
    assert dot_git(ws) == git
    assert "removed  notes.txt" in r.stdout
    (unheld,) = [line for line in r.stdout.splitlines() if line.startswith("not restored")]
    assert unheld.endswith(": .git/, data/")  # data/ holds only ignored files
    (record,) = rewind_records(ws)
    assert (record["step"], record["phase"]) == ("corr-T-0042-3", "pre")
    assert "notes.txt" in record["changed"]

    verify = lorch("verify", "--workspace", str(ws), "--run", rid)
    assert verify.returncode == 1
    assert "the workspace was rewound after the run" in verify.stdout

    r = lorch("rewind", "--workspace", str(ws), "--undo")
    assert r.returncode == 0, r.stderr
    assert users_files(ws) == before
    assert dot_git(ws) == git
    assert [p.get("undo", False) for p in rewind_records(ws)] == [False, True]
    assert lorch("verify", "--workspace", str(ws), "--run", rid).returncode == 0

    r = lorch("rewind", "--workspace", str(ws), "--undo")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "no rewind to undo" in r.stderr


def test_rewind_to_after_a_step_and_undo_walks_back(ws: Path, lorch: Runner) -> None:
    rid = run_id(ws)
    start = users_files(ws)
    r = lorch("rewind", "-w", str(ws), "--run", rid, "--to", "corr-T-0042-1", "--after")
    assert r.returncode == 0, r.stderr
    assert (journal(ws, "builder"), journal(ws, "reviewer")) == (1, 0)
    assert (ws / "src/greeting.py").is_file() and not (ws / "reviews/T-0042.json").exists()
    after_one = users_files(ws)
    r = lorch("rewind", "-w", str(ws), "--run", rid, "--to", "corr-T-0042-4", "--after")
    assert r.returncode == 0, r.stderr
    assert (journal(ws, "builder"), journal(ws, "reviewer")) == (2, 2)
    # The same rewind again finds nothing to do and records nothing.
    r = lorch("rewind", "-w", str(ws), "--run", rid, "--to", "corr-T-0042-4", "--after")
    assert r.returncode == 0 and "nothing to do" in r.stdout
    assert len(rewind_records(ws)) == 2
    assert lorch("rewind", "-w", str(ws), "--undo").returncode == 0
    assert users_files(ws) == after_one
    assert lorch("rewind", "-w", str(ws), "--undo").returncode == 0
    assert users_files(ws) == start


def test_refused_while_a_run_holds_the_workspace(ws: Path, lorch: Runner) -> None:
    files = users_files(ws)
    fd = os.open(ws / "state" / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        r = lorch("rewind", "-w", str(ws), "--run", run_id(ws), "--to", "corr-T-0042-1")
    finally:
        os.close(fd)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1
    assert f"another lorch process (pid {os.getpid()}) is running in this workspace" in r.stderr
    assert users_files(ws) == files and rewind_records(ws) == []


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--to", "corr-T-9"], "has no step 'corr-T-9' with a checkpoint"),
        (["--undo", "--to", "corr-T-0042-1"], "--undo takes no --run, --to or --after"),
        ([], "give --to STEP"),
    ],
)
def test_a_bad_request_is_one_line(ws: Path, lorch: Runner, args: list[str], says: str) -> None:
    r = lorch("rewind", "-w", str(ws), *args)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and says in r.stderr
    assert rewind_records(ws) == []


def test_an_unfinished_run_is_not_rewound(ws: Path, lorch: Runner) -> None:
    # Cut the ledger back to the second builder turn's checkpoint: a crashed run.
    path = ws / "events" / f"{run_id(ws)}.ndjson"
    lines = path.read_bytes().splitlines(keepends=True)
    n = next(
        i
        for i, raw in enumerate(lines)
        if b'"system.checkpoint"' in raw and b'"phase":"pre"' in raw and i > 20
    )
    path.write_bytes(b"".join(lines[: n + 1]))
    (ws / "state" / "heads" / f"{run_id(ws)}.json").unlink()
    files = users_files(ws)
    r = lorch("rewind", "-w", str(ws), "--run", run_id(ws), "--to", "corr-T-0042-1")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1
    assert "is unfinished (running)" in r.stderr and "lorch resume --run" in r.stderr
    assert users_files(ws) == files
