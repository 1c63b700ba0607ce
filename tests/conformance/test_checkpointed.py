"""The IDEMP battery under lorch's checkpoints: a non-idempotent agent fails bare, passes under."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lorch.conformance import run_battery

pytestmark = pytest.mark.e2e

APPENDER = [sys.executable, str(Path(__file__).parent.parent / "agents" / "appender.py"), "builder"]
IDEMP = ["IDEMP-001", "IDEMP-003", "IDEMP-004", "IDEMP-005", "IDEMP-007", "IDEMP-008", "IDEMP-009"]
REDO = ["IDEMP-001", "IDEMP-003", "IDEMP-004", "IDEMP-007"]  # what an agent that never caches fails


def verdicts(report: object) -> dict[str, str]:
    return {o.check.id: o.verdict.status for o in report.outcomes}  # type: ignore[attr-defined]


def test_appender_fails_idempotency_bare() -> None:
    report = run_battery(APPENDER, only=IDEMP, timeout=10)
    got = verdicts(report)
    assert {k: v for k, v in got.items() if v == "fail"} == dict.fromkeys(REDO, "fail"), got
    assert not report.passed


def test_appender_passes_idempotency_under_checkpoints(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    report = run_battery(APPENDER, only=IDEMP, timeout=10, workspace=ws, checkpoints=True)
    assert verdicts(report) == dict.fromkeys(IDEMP, "pass"), report.transcript
    assert report.passed
    assert "answered from the record, not sent again" in report.transcript
    assert "was interrupted: rolled back" in report.transcript
    # Each key the agent executed left exactly one line: the interrupted one was undone.
    keys = [line.split()[0] for line in (ws / "effects.log").read_text().splitlines()]
    assert len(keys) == len(set(keys))


def test_cli_checkpoints_flag() -> None:
    import subprocess

    argv = [sys.executable, "-m", "lorch", "conformance", "--checkpoints"]
    argv += [a for c in IDEMP for a in ("--only", c)]
    done = subprocess.run([*argv, "--", *APPENDER], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    bare = subprocess.run(
        [*argv[:4], *argv[5:], "--", *APPENDER], capture_output=True, text=True, timeout=120
    )
    assert bare.returncode == 1 and "IDEMP-001" in bare.stdout
