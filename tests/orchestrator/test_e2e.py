"""End-to-end: the real lorch and mockagent as subprocesses, on bundled scenarios."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from lorch.app.scenarios import load
from lorch.wire import schemas

from .conftest import Runner, completions, records, run_ids, terminal_events

pytestmark = pytest.mark.e2e

SCENARIOS = [
    "happy-path",
    "review-loop",
    "spec-loop",
    "tests-failing",
    "tests-failing-allowed",
    "agent-crash-restart",
    "heartbeat-timeout",
    "garbage-output",
    "artifact-lie",
    "slow-agents",
]


def assert_every_file_valid(ws: Path) -> None:
    for rid in run_ids(ws):
        records(ws, rid)  # validates every ledger line
    for p in ws.glob("receipts/*/step-*.json"):
        schemas.validate("receipt", json.loads(p.read_text()), source=str(p))
    schemas.validate("run-state", json.loads((ws / "state/run.json").read_text()))
    schemas.validate("index", json.loads((ws / "state/index.json").read_text()))
    for p in ws.glob("snapshots/*.manifest.json"):
        schemas.validate("snapshot-manifest", json.loads(p.read_text()))
    schemas.validate("config", json.loads((ws / "lorch.json").read_text()))
    for p in [*ws.glob("receipts/**/*"), *ws.glob("state/*"), *ws.glob("events/*")]:
        if p.is_file():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_outcome(name: str, scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario(name)
    expected = load(name)["expected"]
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == (0 if expected["status"] == "completed" else 1), r.stderr
    assert terminal_events(ws) == expected["terminal_events"]
    for f in expected["files"]:
        assert (ws / f).is_file(), f
    state = json.loads((ws / "state/run.json").read_text())
    assert state["status"] == expected["status"]
    assert expected.get("reason", "") in (state.get("failure") or "")
    assert max(completions(ws).values()) == 1
    assert_every_file_valid(ws)
    if expected["status"] == "completed":
        v = lorch("verify", "--workspace", str(ws), "--run", run_ids(ws)[0])
        assert v.returncode == 0, v.stdout
        assert "[lorch] DONE" in r.stdout
        transcript = (ws / "transcripts" / f"{run_ids(ws)[0]}.txt").read_text()
        assert transcript.splitlines()[-1] == "[lorch] DONE"


def test_each_command_is_due_after_its_own_action_s_timeout(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    cfg = json.loads((ws / "lorch.json").read_text())
    cfg["agents"]["reviewer"]["timeouts_s"] = {"review": 1234}
    (ws / "lorch.json").write_text(json.dumps(cfg))
    assert lorch("run", "--workspace", str(ws)).returncode == 0
    recs = records(ws)
    start = datetime.fromisoformat(recs[0]["occurred_at"])
    expected = {"implement": 600, "review": 1234, "update_spec": 180}
    commands = [r for r in recs if r["kind"] == "command"]
    assert {c["action"] for c in commands} == set(expected)
    for c in commands:
        due = (datetime.fromisoformat(c["deadline"]) - start).total_seconds()
        assert expected[c["action"]] <= due < expected[c["action"]] + 60, c


def test_failing_tests_message_names_task_and_summary(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("tests-failing")
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 1
    assert "T-0042" in r.stderr and "1 failed: test_greet" in r.stderr
    assert "Traceback" not in r.stderr


def test_fault_scenarios_record_their_faults(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    expectations = {
        "agent-crash-restart": "agent_exited",
        "heartbeat-timeout": "heartbeat_timeout",
        "garbage-output": "protocol_error",
    }
    for name, code in expectations.items():
        ws = scenario(name)
        r = lorch("run", "--workspace", str(ws))
        assert r.returncode == 0, r.stderr
        recs = records(ws)
        codes = [x["payload"]["code"] for x in recs if x.get("event") == "system.command_failed"]
        assert codes == [code], name
        assert any(x.get("event") == "system.agent_restarted" for x in recs)
        cmds = [x for x in recs if x["kind"] == "command" and x["action"] == "implement"]
        assert len({c["idempotency_key"] for c in cmds}) == 1 and len(cmds) == 2
        assert [c["retry"]["attempt"] for c in cmds] == [0, 1]
        if name == "garbage-output":
            err = next(x for x in recs if x.get("event") == "system.protocol_error")
            assert err["payload"]["size"] > 0 and err["payload"]["prefix"].startswith(
                "this is not json"
            )
        import shutil

        shutil.rmtree(ws)


def test_bad_failpoint_is_refused_before_any_run_is_made(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    r = lorch("run", "--workspace", str(ws), env={"LORCH_CRASH_AT": "diskfull:x"})
    assert r.returncode == 2 and "LORCH_CRASH_AT" in r.stderr
    assert not list(ws.glob("events/run-*.ndjson"))


def test_resume_picks_the_last_written_of_runs_started_in_the_same_second(
    tmp_path: Path,
) -> None:
    from lorch.app.runner import find_unfinished

    events = tmp_path / "events"
    events.mkdir()
    # "ffff" sorts after "0000" but was written first.
    older = events / "run-20260101-000000-ffffffff.ndjson"
    newer = events / "run-20260101-000000-00000000.ndjson"
    older.write_text("")
    newer.write_text("")
    os.utime(older, ns=(1_000_000_000, 1_000_000_000))
    os.utime(newer, ns=(2_000_000_000, 2_000_000_000))
    assert find_unfinished(tmp_path) == newer.stem


def test_resume_of_a_completed_run_says_so(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    assert lorch("run", "--workspace", str(ws)).returncode == 0
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 0 and "already completed" in r.stdout


def test_resume_of_a_failed_run_exits_1_with_reason(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("tests-failing")
    assert lorch("run", "--workspace", str(ws)).returncode == 1
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 1 and "builder tests failed" in r.stderr


def test_second_run_keeps_the_first(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    assert lorch("run", "--workspace", str(ws)).returncode == 0
    assert lorch("run", "--workspace", str(ws)).returncode == 0
    ids = run_ids(ws)
    assert len(ids) == 2
    status = lorch("status", "--workspace", str(ws)).stdout
    for rid in ids:
        assert rid in status
        assert lorch("verify", "--workspace", str(ws), "--run", rid).returncode == 0
    steps = sorted(int(p.stem.split("-")[1]) for p in (ws / "receipts/T-0042").glob("step-*.json"))
    assert steps == [1, 2, 3, 4, 5, 6]


def test_independent_agent(tmp_path: Path, lorch: Runner) -> None:
    agent = str(Path(__file__).parent.parent / "agents" / "simple_agent.py")
    ws = tmp_path / "ws"
    ws.mkdir()
    cfg = {
        "version": "1",
        "task": {"id": "T-0007"},
        "agents": {
            role: {"cmd": [sys.executable, agent, role], "heartbeat_interval_s": 0.5}
            for role in ("builder", "reviewer", "spec_maintainer")
        },
    }
    (ws / "lorch.json").write_text(json.dumps(cfg))
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    assert terminal_events(ws) == [
        "builder.completed",
        "review.completed:approved",
        "spec.no_changes_needed",
    ]
    assert (ws / "simple" / "T-0007.txt").read_text() == "# T-0007 round 1\n"
    # A garbage-printing independent agent: protocol error, restart, completion.
    ws2 = tmp_path / "ws2"
    ws2.mkdir()
    # The switch reaches the builder only: an agent gets what its role's pass_env names.
    agents = {**cfg["agents"]}
    agents["builder"] = {**agents["builder"], "pass_env": ["SIMPLE_AGENT_GARBAGE"]}
    garbage = {**cfg, "agents": agents, "policy": {"backoff": {"initial_s": 0.01}}}
    (ws2 / "lorch.json").write_text(json.dumps(garbage))
    r = lorch("run", "--workspace", str(ws2), env={"SIMPLE_AGENT_GARBAGE": "1"})
    assert r.returncode == 0, r.stderr
    assert "protocol error from builder" in r.stdout


def test_bad_config_names_the_json_path(tmp_path: Path, lorch: Runner) -> None:
    (tmp_path / "lorch.json").write_text(
        json.dumps({"version": "1", "agents": {"builder": {"cmd": []}}})
    )
    r = lorch("run", "--workspace", str(tmp_path))
    assert r.returncode == 2
    # Every mistake at once, one line each.
    lines = r.stderr.strip().splitlines()
    assert lines[0].endswith("lorch.json: 3 problems:"), r.stderr
    assert lines[1:] == [
        "  $.agents: 'reviewer' is a required property",
        "  $.agents: 'spec_maintainer' is a required property",
        "  $.agents.builder.cmd: [] should be non-empty",
    ]
    (tmp_path / "lorch.json").write_text("{bad json")
    r = lorch("run", "--workspace", str(tmp_path))
    assert r.returncode == 2 and "line 1 column 2" in r.stderr


def test_agent_command_not_found(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    cfg = json.loads((ws / "lorch.json").read_text())
    cfg["agents"]["reviewer"]["cmd"] = ["no-such-agent-xyz"]
    (ws / "lorch.json").write_text(json.dumps(cfg))
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 2
    assert "reviewer" in r.stderr and "no-such-agent-xyz" in r.stderr
    assert not (ws / "events").exists()


def test_error_events_retry_with_same_key_then_fail(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    (ws / "fixtures/reviewer.json").write_text(
        json.dumps(
            {"responses": {"review": {"error": {"code": "quota_exceeded", "message": "no quota"}}}}
        )
    )
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 1
    assert "reviewer" in r.stderr and "quota_exceeded" in r.stderr
    reviews = [x for x in records(ws) if x["kind"] == "command" and x["action"] == "review"]
    assert len(reviews) == 3 and len({c["idempotency_key"] for c in reviews}) == 1


def test_stderr_burst_is_fully_logged(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    fx = json.loads((ws / "fixtures/builder.json").read_text())
    fx["responses"]["implement"]["fault"] = {"kind": "stderr_burst", "lines": 10000}
    (ws / "fixtures/builder.json").write_text(json.dumps(fx))
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    log = (ws / "logs/builder" / f"{run_ids(ws)[0]}.ndjson").read_text().splitlines()
    lines = [json.loads(x)["line"] for x in log if '"stderr"' in x]
    burst = [x for x in lines if x.startswith("mockagent stderr line ")]
    assert burst == [f"mockagent stderr line {i}" for i in range(10000)]


def test_secrets_never_recorded(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    secret = "tok-5up3r-s3cr3t"
    cfg = json.loads((ws / "lorch.json").read_text())
    cfg["agents"]["builder"]["cmd"] += ["--id", secret]
    (ws / "lorch.json").write_text(json.dumps(cfg))
    r = lorch("run", "--workspace", str(ws), env={"SERVICE_TOKEN": secret})
    assert r.returncode == 0, r.stderr
    for p in [*ws.glob("events/*"), *ws.glob("logs/**/*"), *ws.glob("transcripts/*")]:
        if p.is_file():
            assert secret not in p.read_text(), p
    assert secret not in r.stdout


def test_unwritable_ledger_is_a_clean_error(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    (ws / "events").write_text("a file where the ledger directory should be")
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 1, r.stderr
    # One line naming the path that is not a directory (lorch's own folders are
    # opened by descriptor, so the folder fails before the ledger file).
    assert r.stderr.startswith("lorch: cannot create directory ") and "Traceback" not in r.stderr
    assert "/events: Not a directory" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("k", [6, 12, 20])
def test_disk_full_mid_run_is_a_clean_error_and_resumable(scenario, lorch: Runner, k: int) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("review-loop")
    r = lorch("run", "--workspace", str(ws), env={"LORCH_CRASH_AT": f"diskfull:{k}"})
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert r.stderr.startswith("lorch: cannot append to ledger")
    assert "No space left on device" in r.stderr and "lorch resume" in r.stderr
    recs = records(ws)
    assert len(recs) == k - 1  # the half-written record is not a record
    # Every agent lorch started was stopped before it reported the error.
    for rec in recs:
        if rec.get("event") == "system.agent_started":
            pid = rec["payload"]["pid"]
            assert (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text().lower()
            ), f"agent {pid} still runs"
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    assert "cut a torn last line" in r.stdout
    assert lorch("verify", "--workspace", str(ws), "--run", run_ids(ws)[-1]).returncode == 0
    assert max(completions(ws).values()) == 1


def test_receipts_appear_while_a_slow_agent_works(
    scenario, lorch_bin: str, clean_env: dict[str, str]
) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    fx = json.loads((ws / "fixtures/reviewer.json").read_text())
    fx["responses"]["review"]["delay_ms"] = 3000
    (ws / "fixtures/reviewer.json").write_text(json.dumps(fx))
    proc = subprocess.Popen(
        [lorch_bin, "run", "--workspace", str(ws)],
        env=clean_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        receipt = ws / "receipts" / "T-0042" / "step-1.json"
        deadline = time.monotonic() + 30
        while not receipt.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)  # polling for a condition, bounded by the deadline
        assert receipt.exists(), "no receipt for the builder while the reviewer worked"
        # The reviewer has not answered yet: the receipt came while it worked.
        assert not any(r.get("event") == "review.completed" for r in records(ws))
        assert json.loads(receipt.read_text())["action"] == "implement"
    finally:
        assert proc.wait(60) == 0


def test_interrupt_leaves_a_resumable_run(
    scenario, lorch_bin: str, clean_env: dict[str, str], lorch: Runner
) -> None:  # type: ignore[no-untyped-def]
    import pexpect

    ws = scenario("happy-path")
    fx = json.loads((ws / "fixtures/reviewer.json").read_text())
    fx["responses"]["review"]["delay_ms"] = 60000
    (ws / "fixtures/reviewer.json").write_text(json.dumps(fx))
    child = pexpect.spawn(
        lorch_bin, ["run", "--workspace", str(ws)], env=clean_env, encoding="utf-8", timeout=30
    )
    child.expect(r"review \(T-0042, round 1\)")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 130
    assert "lorch resume" in (child.before or "")
    state = json.loads((ws / "state/run.json").read_text())
    assert state["status"] == "running"
    fx["responses"]["review"]["delay_ms"] = 0
    (ws / "fixtures/reviewer.json").write_text(json.dumps(fx))
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    assert max(completions(ws).values()) == 1


@pytest.mark.parametrize(
    ("artifact", "reason"),
    [
        ({"path": "../outside.txt", "sha256": "sha256:" + "0" * 64, "size": 1}, "contains '..'"),
        ({"path": "/etc/hostname", "sha256": "sha256:" + "0" * 64, "size": 1}, "is absolute"),
        ({"path": "specs/SPEC.md", "sha256": "sha256:" + "0" * 64, "size": 1}, "agent claimed"),
        ({"path": "missing.txt", "sha256": "sha256:" + "0" * 64, "size": 1}, "no such file"),
    ],
)
def test_bad_artifacts_are_rejected_and_retried(
    scenario, lorch: Runner, artifact: dict[str, object], reason: str
) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    (ws / "fixtures/builder.json").write_text(
        json.dumps(
            {
                "responses": {
                    "implement": {
                        "events": [
                            {
                                "type": "builder.completed",
                                "status": "success",
                                # Sent as claimed: mockagent writes no file for it.
                                "artifacts": [{**artifact, "write": False}],
                                "payload": {"tests": {"status": "pass", "summary": "ok"}},
                            }
                        ]
                    }
                }
            }
        )
    )
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 1
    recs = records(ws)
    rejected = [x for x in recs if x.get("event") == "system.artifact_rejected"]
    assert len(rejected) == 3 and reason in rejected[0]["payload"]["reason"]
    failed = [x for x in recs if x.get("event") == "system.command_failed"]
    assert [f["payload"]["code"] for f in failed] == ["artifact_mismatch"] * 3
    assert "artifact_mismatch" in r.stderr
    assert not list(ws.glob("receipts/*/step-*.json"))


def test_validate_and_doctor(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    assert lorch("run", "--workspace", str(ws)).returncode == 0
    files = [
        str(p)
        for p in [
            *ws.glob("events/*.ndjson"),
            *ws.glob("receipts/*/*.json"),
            ws / "state/run.json",
            ws / "state/index.json",
            ws / "lorch.json",
            *ws.glob("snapshots/*.json"),
        ]
    ]
    ok = lorch("validate", "--schemas", files[0], *files[1:])
    assert ok.returncode == 0 and "all valid" in ok.stdout
    ledger_path = next(ws.glob("events/*.ndjson"))
    lines = ledger_path.read_bytes().split(b"\n")
    n = next(i for i, line in enumerate(lines) if b'"kind":"command"' in line)
    lines[n] = lines[n].replace(b'"kind":"command"', b'"kind":"commandeer"')
    bad = ws / "bad.ndjson"
    bad.write_bytes(b"\n".join(lines))
    r = lorch("validate", "--schemas", str(bad))
    assert r.returncode == 1 and f"bad.ndjson:{n + 1}:" in r.stdout and "$.kind" in r.stdout
    d = lorch("doctor", "--workspace", str(ws))
    assert d.returncode == 0, d.stdout
    assert "ok   agent builder" in d.stdout and "ok   fsync" in d.stdout
    cfg = json.loads((ws / "lorch.json").read_text())
    cfg["agents"]["builder"]["cmd"] = ["nowhere-agent"]
    (ws / "lorch.json").write_text(json.dumps(cfg))
    d = lorch("doctor", "--workspace", str(ws))
    assert d.returncode == 1 and "FAIL agent builder" in d.stdout and "nowhere-agent" in d.stdout
