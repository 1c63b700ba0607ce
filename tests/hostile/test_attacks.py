"""Each attack of issue 14 by a real hostile agent process, and what lorch does.

The agent (tests/agents/hostile/agent.py) attacks on its first command, then is
honest, so each run can still finish: the test checks the attack was refused,
recorded as a protocol error (or a failed attempt), and left no trace where it
should not.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import (
    Workspace,
    answered_by,
    assert_clean_exit,
    protocol_errors,
    records,
    run_ids,
    terminal_events,
)

pytestmark = pytest.mark.e2e

HAPPY = ["builder.completed", "review.completed:approved", "spec.no_changes_needed"]
HONEST = [
    ("builder", "builder.completed"),
    ("reviewer", "review.completed"),
    ("spec_maintainer", "spec.no_changes_needed"),
]


def verify(lorch, ws: Path) -> None:  # type: ignore[no-untyped-def]
    v = lorch("verify", "--workspace", str(ws), "--run", run_ids(ws)[-1])
    assert v.returncode == 0, v.stdout


def test_forged_run_completed_does_not_end_the_run(hostile_ws: Workspace, lorch) -> None:  # type: ignore[no-untyped-def]
    ws = hostile_ws({"builder": "forged_completed"})
    r = lorch("run", "--workspace", str(ws))
    assert_clean_exit(r)
    errors = protocol_errors(ws)
    assert [e["role"] for e in errors] == ["builder"]
    assert "system" in errors[0]["reason"]
    # Only lorch wrote system.* records, and the run went through every stage.
    systems = [r for r in records(ws) if str(r.get("event")).startswith("system.")]
    assert all(r["from"]["agent_type"] == "system" for r in systems)
    assert sum(r["event"] == "system.run_completed" for r in systems) == 1
    assert records(ws)[-1]["event"] == "system.run_completed"
    assert terminal_events(ws) == HAPPY
    verify(lorch, ws)


@pytest.mark.parametrize("attack", ["spoof_reviewer", "wrong_event"])
def test_the_builder_cannot_answer_for_the_reviewer(
    attack: str,
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = hostile_ws({"builder": attack})
    r = lorch("run", "--workspace", str(ws))
    assert_clean_exit(r)
    errors = protocol_errors(ws)
    assert [e["role"] for e in errors] == ["builder"], errors
    assert "review.completed" in errors[0]["reason"]
    assert answered_by(ws) == HONEST
    verify(lorch, ws)


def test_an_idle_agent_cannot_answer_another_s_command(hostile_ws: Workspace, lorch) -> None:  # type: ignore[no-untyped-def]
    # While the builder works, the spec maintainer (idle) answers the builder's
    # command, claiming to be the builder: a reply to a command not sent to it.
    ws = hostile_ws({"spec_maintainer": "idle_answer"})
    r = lorch("run", "--workspace", str(ws))
    assert_clean_exit(r)
    assert [e["role"] for e in protocol_errors(ws)] == ["spec_maintainer"]
    assert answered_by(ws) == HONEST
    verify(lorch, ws)


def _victim() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True
    )


def test_resume_never_kills_a_pid_an_agent_named(hostile_ws: Workspace, lorch) -> None:  # type: ignore[no-untyped-def]
    victim = _victim()
    try:
        # Without a sandbox: the defence is resume's own (a sandboxed builder would
        # die with lorch, leaving no orphan to end), and the builder gets the
        # victim's pid from lorch's environment through its pass_env.
        ws = hostile_ws(
            {"builder": "forged_agent_started"},
            builder={"pass_env": ["HOSTILE_VICTIM"], "sandbox": "none"},
        )
        env = {"HOSTILE_VICTIM": f"{victim.pid}:{victim.pid}"}
        # Records 1-6: run, snapshot, three agents started, implement; 7 is
        # what lorch made of the forged line. lorch dies right after it.
        r = lorch("run", "--workspace", str(ws), env={**env, "LORCH_CRASH_AT": "after:7"})
        assert r.returncode == -signal.SIGKILL
        assert records(ws)[-1]["event"] == "system.protocol_error"
        r = lorch("resume", "--workspace", str(ws), env=env)
        assert_clean_exit(r)
        assert victim.poll() is None, "resume killed a process lorch never started"
        resumed = [x for x in records(ws) if x.get("event") == "system.resumed"]
        started = [x["payload"] for x in records(ws) if x.get("event") == "system.agent_started"]
        assert victim.pid not in [s["pid"] for s in started]
        assert all(s["start_time"] > 0 for s in started)
        # The builder (asleep in its attack) was lorch's own orphan: ended. The
        # idle agents had exited at EOF.
        builder = next(s["pid"] for s in started if s["role"] == "builder")
        assert resumed[0]["payload"]["orphans_killed"] == [builder]
        assert terminal_events(ws) == HAPPY
    finally:
        victim.kill()
        victim.wait()


def test_an_agent_that_never_reads_is_timed_out_like_one_that_never_answers(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    goal = "x" * 200_000  # a long goal: the command is far bigger than a pipe's buffer
    ws = hostile_ws(
        {"builder": "never_reads"},
        task={"id": "T-0042", "goal": goal},
        builder={"timeouts_s": {"implement": 1.5}},
    )
    r = lorch("run", "--workspace", str(ws), timeout=90)
    assert_clean_exit(r)
    failed = [x["payload"] for x in records(ws) if x.get("event") == "system.command_failed"]
    assert [f["code"] for f in failed] == ["timeout"]
    implements = [x for x in records(ws) if x.get("action") == "implement"]
    assert len(implements) == 2 and len({c["idempotency_key"] for c in implements}) == 1
    assert terminal_events(ws) == HAPPY


def test_a_hard_linked_artifact_from_outside_is_rejected(
    hostile_ws: Workspace,
    lorch,
    tmp_path: Path,  # type: ignore[no-untyped-def]
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    # Without a sandbox (it would keep the agent from writing outside at all): the
    # defence is lorch's check of the artifact's links.
    ws = hostile_ws(
        {"builder": "hardlink"}, builder={"pass_env": ["HOSTILE_OUTSIDE"], "sandbox": "none"}
    )
    r = lorch("run", "--workspace", str(ws), env={"HOSTILE_OUTSIDE": str(outside)})
    assert_clean_exit(r)
    rejected = [x["payload"] for x in records(ws) if x.get("event") == "system.artifact_rejected"]
    assert len(rejected) == 1 and "hard link" in rejected[0]["reason"], rejected
    assert terminal_events(ws) == ["builder.completed", *HAPPY]
    receipts = [json.loads(p.read_text()) for p in ws.glob("receipts/*/step-*.json")]
    assert all(a["path"] != "hostile/linked.txt" for rc in receipts for a in rc["artifacts"])
    verify(lorch, ws)


def test_a_deleted_receipt_is_rebuilt_and_verify_passes(scenario, lorch) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("review-loop")
    assert_clean_exit(lorch("run", "--workspace", str(ws)))
    steps = sorted((ws / "receipts" / "T-0042").glob("step-*.json"))
    first = steps[0]
    before = json.loads(first.read_text())
    first.unlink()
    r = lorch("resume", "--workspace", str(ws))
    assert_clean_exit(r)
    assert first.exists(), "rebuilt under its own step number"
    assert json.loads(first.read_text()) == before
    assert sorted((ws / "receipts" / "T-0042").glob("step-*.json")) == steps
    verify(lorch, ws)
    assert_clean_exit(lorch("resume", "--workspace", str(ws)))
    verify(lorch, ws)


def test_every_file_and_dir_is_private_under_umask_000(
    scenario, lorch_bin, clean_env, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    ws = tmp_path / "fresh"
    r = subprocess.run(
        [lorch_bin, "run", "--workspace", str(ws)],
        env=clean_env,
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.umask(0),
    )
    assert_clean_exit(r)
    agents_own = {".mockagent", "src", "tests", "reviews", "spec_notes"}  # written by agents
    for path in [ws, *ws.rglob("*")]:
        rel = path.relative_to(ws)
        if rel.parts and rel.parts[0] in agents_own:
            continue
        m = stat.S_IMODE(path.lstat().st_mode)
        assert m == (0o700 if path.is_dir() else 0o600), f"{rel}: {oct(m)}"


def test_resume_sweeps_lorch_s_stale_temp_files(scenario, lorch) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    assert_clean_exit(lorch("run", "--workspace", str(ws)))
    rid = run_ids(ws)[0]
    stale = [
        ws / "state" / ".run.json.tmp-4242-0a1b2c3d",
        ws / "receipts" / "T-0042" / ".step-9.json.tmp-4242-0a1b2c3d",
        ws / "snapshots" / ".snap-0.manifest.json.tmp-4242-0a1b2c3d",
        ws / "transcripts" / f".{rid}.txt.tmp-4242",
    ]
    for p in stale:
        p.write_text("half written")
    agent_temp = ws / "src" / ".greeting.py.tmp-4242-0a1b2c3d"
    agent_temp.write_text("not lorch's")
    assert_clean_exit(lorch("resume", "--workspace", str(ws)))
    assert not any(p.exists() for p in stale)
    assert agent_temp.exists()
