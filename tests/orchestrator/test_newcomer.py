"""Frictions a newcomer meets: a closed console, defaults, --workspace everywhere, fixtures."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .conftest import Runner, run_ids

pytestmark = pytest.mark.e2e


def test_a_console_closed_early_does_not_stop_the_run(
    tmp_path: Path, lorch_bin: str, clean_env: dict[str, str]
) -> None:
    # `lorch run | head -2`: the reader takes two lines and goes away.
    ws = tmp_path / "demo"
    proc = subprocess.Popen(
        [lorch_bin, "run", "--workspace", str(ws)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    for _ in range(2):
        assert proc.stdout.readline()
    proc.stdout.close()
    rc = proc.wait(60)
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert rc == 0, stderr
    assert "broken pipe" in stderr and "the run goes on" in stderr
    assert "Traceback" not in stderr and "Exception ignored" not in stderr
    state = json.loads((ws / "state" / "run.json").read_text())
    assert state["status"] == "completed"
    transcript = (ws / "transcripts" / f"{run_ids(ws)[0]}.txt").read_text()
    assert transcript.splitlines()[-1] == "[lorch] DONE"


def test_verify_defaults_to_the_latest_run(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    assert lorch("run", "--workspace", str(ws)).returncode == 0
    second = lorch("run", "--workspace", str(ws))
    assert second.returncode == 0
    # The run started last (both may start in the same second: ids alone do not sort them).
    latest = second.stdout.split()[2]
    assert latest in run_ids(ws) and len(run_ids(ws)) == 2
    r = lorch("verify", "--workspace", str(ws))
    assert r.returncode == 0, r.stdout
    assert f"run {latest} (the latest)" in r.stdout
    empty = ws.parent / "empty"
    empty.mkdir()
    r = lorch("verify", "--workspace", str(empty))
    assert r.returncode == 2 and "no runs" in r.stderr


def test_validate_takes_the_workspace_and_knows_fixtures(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    assert lorch("run", "--workspace", str(ws)).returncode == 0
    r = lorch("validate", "--workspace", str(ws))
    assert r.returncode == 0, r.stdout
    assert "all valid" in r.stdout
    n = int(r.stdout.split("(")[-1].split()[0])
    assert n >= 8  # lorch.json, ledger, run.json, index, manifest, receipts, 3 fixtures
    r = lorch("validate", "--workspace", str(ws), "--schemas", "fixtures/builder.json")
    assert r.returncode == 0 and "all valid (1 file)" in r.stdout
    fx = json.loads((ws / "fixtures" / "builder.json").read_text())
    fx["responses"]["implement"]["dealy_ms"] = 5
    (ws / "fixtures" / "builder.json").write_text(json.dumps(fx))
    r = lorch("validate", "--workspace", str(ws), "--schemas", "fixtures/builder.json")
    assert r.returncode == 1
    assert "fixtures/builder.json: $.responses.implement:" in r.stdout
    assert "did you mean 'delay_ms'?" in r.stdout and "(schema fixture)" in r.stdout


def test_commands_refuse_a_workspace_that_does_not_exist(tmp_path: Path, lorch: Runner) -> None:
    missing = str(tmp_path / "nope")
    for args in (("verify",), ("status",), ("resume",), ("validate",), ("doctor",)):
        r = lorch(*args, "--workspace", missing)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
    assert not (tmp_path / "nope").exists()


def test_crashtest_takes_the_workspace(tmp_path: Path, lorch: Runner) -> None:
    import shutil

    from lorch.wire.resources import scenarios_dir

    shutil.copytree(scenarios_dir() / "happy-path", tmp_path / "mine")
    r = lorch(
        "crashtest",
        "mine",
        "--workspace",
        str(tmp_path),
        "--modes",
        "kill",
        "--offsets",
        "1",
        "--json",
        "report.json",
        timeout=120,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((tmp_path / "report.json").read_text())


def test_a_required_output_never_written_fails_the_attempt(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    from .conftest import records

    ws = scenario("happy-path")
    fx = json.loads((ws / "fixtures" / "builder.json").read_text())
    # Writes the greeting but not its test, which the task lists as expected.
    fx["responses"]["implement"]["files"] = fx["responses"]["implement"]["files"][:1]
    (ws / "fixtures" / "builder.json").write_text(json.dumps(fx))
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 1
    assert "'tests/test_greeting.py' rejected: required output was not written" in r.stderr
    failed = [x for x in records(ws) if x.get("event") == "system.command_failed"]
    assert [f["payload"]["code"] for f in failed] == ["missing_output"] * 3
    assert not list(ws.glob("receipts/*/step-*.json"))


def test_an_artifact_over_the_cap_is_rejected(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    cfg = json.loads((ws / "lorch.json").read_text())
    cfg["policy"]["artifact_max_bytes"] = 40
    (ws / "lorch.json").write_text(json.dumps(cfg))
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 1
    assert "bytes is over policy.artifact_max_bytes (40)" in r.stderr


def test_doctor_checks_each_mockagent_fixture(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    r = lorch("doctor", "--workspace", str(ws))
    assert r.returncode == 0, r.stdout
    assert "ok   fixture reviewer: fixtures/reviewer.json" in r.stdout
    (ws / "fixtures" / "reviewer.json").write_text('{"responses": {"review": {"dealy_ms": 1}}}')
    r = lorch("doctor", "--workspace", str(ws))
    assert r.returncode == 1
    assert "FAIL fixture reviewer:" in r.stdout and "did you mean 'delay_ms'?" in r.stdout


def test_a_second_ctrl_c_still_stops_every_agent(scenario, lorch_bin: str, clean_env) -> None:  # type: ignore[no-untyped-def]
    import re
    import sys
    import time

    import pexpect

    ws = scenario("happy-path")
    # A reviewer that ignores EOF and SIGTERM: stopping it takes lorch's whole grace.
    # (Its one heartbeat passes the preflight.)
    beat = {
        "kind": "heartbeat",
        "agent": {"agent_type": "reviewer", "agent_id": "reviewer#1"},
        "seq": 0,
        "status": "ready",
        "pid": 1,
        "uptime_s": 0,
        "last_activity_at": "2026-12-01T12:00:00Z",
    }
    (ws / "stubborn.py").write_text(
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        f"print({json.dumps(json.dumps(beat))}, flush=True)\ntime.sleep(300)\n"
    )
    cfg = json.loads((ws / "lorch.json").read_text())
    cfg["agents"]["reviewer"]["cmd"] = [sys.executable, "stubborn.py"]
    (ws / "lorch.json").write_text(json.dumps(cfg))
    child = pexpect.spawn(
        lorch_bin, ["run", "--workspace", str(ws)], env=clean_env, encoding="utf-8", timeout=30
    )
    child.expect(r"review \(T-0042, round 1\)")
    pids = {m[0]: int(m[1]) for m in re.findall(r"started (\w+) \(pid (\d+)\)", child.before)}

    def alive(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().split()[2] != "Z"
        except FileNotFoundError:
            return False

    child.sendintr()
    # The well-behaved builder ends at EOF; the reviewer is still being waited for.
    deadline = time.monotonic() + 10
    while alive(pids["builder"]):
        assert time.monotonic() < deadline, "builder not stopped"
        time.sleep(0.01)
    assert alive(pids["reviewer"])
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert "lorch resume --workspace" in (child.before or "")
    assert not alive(pids["reviewer"])
    assert not any(alive(p) for p in pids.values())
