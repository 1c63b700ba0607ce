"""``lorch rewind`` killed at every point, then run again (issue 25.6).

One clean ``lorch rewind`` is recorded under ``strace -f`` (lorch and every git
it starts: ``lorch/crashtest/strace.py``). A SIGKILL of lorch and its gits
keeps every operation made before it (they are in the page cache) and none
after, so the states a kill can leave are the prefixes of that trace
(``states.Cut(prefix)``, nothing lost). Each distinct one is written into a
fresh workspace, where the same ``lorch rewind`` runs again: it must end with
the workspace the clean rewind left, exactly one ``system.rewind`` record, a
ledger ``lorch verify`` replays, and the crash harness's ledger invariants.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lorch.app import scenarios
from lorch.app.verify import verify
from lorch.crashtest import invariants, states, strace, syscalls
from lorch.crashtest.launcher import lorch_argv, lorch_env
from lorch.store import ledger
from lorch.store.storegit import EXCLUDED, EXCLUDED_FILES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None and not os.environ.get("CI"),
    reason="strace is not installed (.ci/run installs it)",
)
STEP = "corr-T-0042-3"


def users_files(ws: Path) -> dict[str, str]:
    """Every file but lorch's own, by digest: what a rewind moves (and must not)."""
    out = {}
    for path in sorted(ws.rglob("*")):
        rel = path.relative_to(ws).as_posix()
        if rel.split("/")[0] in EXCLUDED or rel in EXCLUDED_FILES or not path.is_file():
            continue
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def rewind_argv(ws: Path, run_id: str) -> list[str]:
    return [*lorch_argv(), "rewind", "--workspace", str(ws), "--run", run_id, "--to", STEP]


def rewind_records(ws: Path, run_id: str) -> list[dict[str, Any]]:
    path = ws / "events" / f"{run_id}.ndjson"
    return [r for r in ledger.read(path) if r.get("event") == "system.rewind"]


@needs_strace
@pytest.mark.timeout(1200)
def test_rewind_killed_anywhere_then_run_again_ends_the_same(tmp_path: Path) -> None:
    env = lorch_env({}, None)
    ws = tmp_path / "recorded"
    scenarios.materialize(scenarios.resolve("acp-exactly-once"), ws)
    (ws / ".gitignore").write_text("*.db\n")
    (ws / "data").mkdir()
    (ws / "data/local.db").write_text("the user's rows\n")
    r = subprocess.run(
        [*lorch_argv(), "run", "--workspace", str(ws)],
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    (run_id,) = [p.stem for p in (ws / "events").glob("run-*.ndjson")]
    # Made after the run: the rewind removes one and leaves the other (ignored).
    (ws / "notes.txt").write_text("written after the run\n")
    (ws / "data/local.db").write_text("the user's rows, changed since\n")

    before = strace.Namespace(ws)
    log = tmp_path / "strace.log"
    traced = [
        strace.strace_path(),
        "-f",
        "-qq",
        "-y",
        "-xx",
        "-s",
        str(1 << 24),
        "-e",
        f"trace={strace.SYSCALLS}",
        "-e",
        "signal=none",
        "-o",
        str(log),
        *rewind_argv(ws, run_id),
    ]
    r = subprocess.run(traced, env=env, capture_output=True, timeout=300, cwd=ws)
    assert r.returncode == 0, r.stderr
    trace = strace.parse(log, before)
    clean = users_files(ws)
    assert not (ws / "notes.txt").exists() and (ws / "data/local.db").is_file()
    assert len(rewind_records(ws, run_id)) == 1

    # The trace replayed whole is the workspace the clean rewind left.
    final = states.materialize(trace, states.Cut(len(trace.ops)))
    assert {k: v for k, v in final.items() if v is not None and k in clean} == {
        rel: (ws / rel).read_bytes() for rel in clean
    }

    seen: set[str] = set()
    checked = finished = 0
    for prefix in range(len(trace.ops) + 1):
        files = states.materialize(trace, states.Cut(prefix))
        digest = states.digest(files)
        if digest in seen:
            continue
        seen.add(digest)
        again = tmp_path / f"killed-{prefix}"
        syscalls.write_state(files, again)
        r = subprocess.run(rewind_argv(again, run_id), env=env, capture_output=True, timeout=120)
        where = f"killed after op {prefix}/{len(trace.ops)}"
        assert r.returncode == 0, f"{where}: {r.stderr.decode()}"
        assert users_files(again) == clean, where
        finished += b"finished a rewind that was interrupted" in r.stdout
        recs = list(ledger.read(again / "events" / f"{run_id}.ndjson"))
        assert [x["event"] for x in recs if x.get("event") == "system.rewind"] == [
            "system.rewind"
        ], where
        invariants.fold(recs)  # no_command_after_answer
        invariants.check_no_stale_temp_files(again)
        assert verify(again, run_id)["ledger_replays"] == [], where
        shutil.rmtree(again)
        checked += 1
    assert checked > 10, f"only {checked} distinct states: the trace missed the restore"
    # Some kills came after the record and before the restore's end: finished, not redone.
    assert 0 < finished < checked
