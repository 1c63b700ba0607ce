"""Intake end to end off a terminal: answers from stdin lines and from flags."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.intake.conftest import decisions, proposal, task_commands, the_ledger

pytestmark = pytest.mark.e2e

Run = Callable[..., Any]
BOTH = [(t, a) for t in ("T-1", "T-2") for a in ("implement", "review", "update_spec")]


def test_scripted_session_on_stdin_runs_both_tasks(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    ws = intake_ws()
    r = lorch_in(ws, "run", stdin="Manage PLAN.md\nHello\n1\n\n")
    assert r.returncode == 0, r.stderr
    assert "lorch> What should I do?" in r.stdout
    assert "lorch> Which greeting word should the modules use? Hello" in r.stdout
    assert "  1. T-1: Greeting module (src/greeting.py, tests/test_greeting.py)" in r.stdout
    ds = decisions(ws)
    assert [(d["payload"]["step"], d["status"], d["payload"]["source"]) for d in ds] == [
        ("instruction", "approved", "stdin"),
        ("clarification", "approved", "stdin"),
        ("plan", "approved", "stdin"),
        ("tasks", "approved", "stdin"),
    ]
    assert ds[-1]["payload"]["approved_tasks"] == ["T-1", "T-2"]
    assert task_commands(ws) == BOTH
    for task in ("T-1", "T-2"):
        assert len(list((ws / "receipts" / task).glob("step-*.json"))) == 3
    assert (ws / "src" / "farewell.py").is_file() and (ws / "src" / "greeting.py").is_file()
    # The second intake carries the answer, under a new key and the same correlation id.
    intakes = [x for x in the_ledger(ws) if x["kind"] == "command" and x["action"] == "intake"]
    assert len({c["idempotency_key"] for c in intakes}) == 2
    assert {c["correlation_id"] for c in intakes} == {"corr-intake"}
    assert intakes[1]["inputs"]["clarifications"][0]["answer"] == "Hello"
    # The builder gets the task it is working on.
    implement = next(x for x in the_ledger(ws) if x.get("action") == "implement")
    assert implement["inputs"]["task"]["id"] == "T-1"
    assert implement["inputs"]["task"]["goal"] == "Greeting module"
    assert implement["inputs"]["task"]["plan"] == "PLAN.md"
    run_id = the_ledger(ws)[0]["payload"]["run_id"]
    status = lorch_in(ws, "status", "--run", run_id)
    assert "[lorch] tasks approved: plan PLAN.md, tasks T-1, T-2 (stdin)" in status.stdout
    assert "task T-1: done\ntask T-2: done\nstatus: completed" in status.stdout
    verify = lorch_in(ws, "verify", "--run", run_id)
    assert verify.returncode == 0, verify.stdout


def test_lorch_alone_starts_intake_too(
    intake_ws: Callable[..., Path], lorch_bin: str, clean_env: dict[str, str]
) -> None:
    ws = intake_ws()
    r = subprocess.run(
        [lorch_bin],
        cwd=ws,
        input="Manage PLAN.md\nHello\n1\nall\n",
        capture_output=True,
        text=True,
        env=clean_env,
        timeout=90,
    )
    assert r.returncode == 0, r.stderr
    assert "lorch> What should I do?" in r.stdout
    assert [d["payload"]["step"] for d in decisions(ws)] == [
        "instruction",
        "clarification",
        "plan",
        "tasks",
    ]
    assert task_commands(ws) == BOTH


def test_flags_answer_everything_and_pick_tasks(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    ws = intake_ws()
    r = lorch_in(
        ws,
        "run",
        "--instruction",
        "Manage PLAN.md",
        "--answer",
        "Hello",
        "--plan",
        "PLAN.md",
        "--tasks",
        "T-2",
    )
    assert r.returncode == 0, r.stderr
    assert {d["payload"]["source"] for d in decisions(ws)} == {"flag"}
    assert task_commands(ws) == [("T-2", a) for a in ("implement", "review", "update_spec")]


def test_end_of_input_declines_and_nothing_runs(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    ws = intake_ws()
    r = lorch_in(ws, "run")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "lorch: run aborted: intake declined by the user at the instruction prompt"
    ]
    (d,) = decisions(ws)
    assert d["status"] == "declined" and d["payload"]["answer"] is None
    assert [x["kind"] for x in the_ledger(ws)].count("command") == 0
    assert the_ledger(ws)[-1]["event"] == "system.run_aborted"


def test_decline_at_the_task_prompt(intake_ws: Callable[..., Path], lorch_in: Run) -> None:
    ws = intake_ws()
    r = lorch_in(ws, "run", "--instruction", "x", "--answer", "Hello", stdin="1\nn\n")
    assert r.returncode == 1 and "declined by the user at the tasks prompt" in r.stderr
    assert task_commands(ws) == []


def test_more_options_then_a_plan_from_the_new_proposal(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    fixture = {
        "responses": {
            "intake": proposal("T-1"),
            "task_discovery": proposal("T-5", plans=("PLAN.md", "docs/other.md")),
        }
    }
    ws = intake_ws(fixture)
    r = lorch_in(ws, "run", "--instruction", "Manage PLAN.md", stdin="m\n2\nall\n")
    assert r.returncode == 0, r.stderr
    actions = [x["action"] for x in the_ledger(ws) if x["kind"] == "command"]
    assert actions[:2] == ["intake", "task_discovery"]
    final = decisions(ws)[-1]["payload"]
    assert (final["approved_plan"], final["approved_tasks"]) == ("docs/other.md", ["T-5"])


def test_the_original_projects_orchestration_fixture_drives_intake(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    original = Path(__file__).parent.parent / "mockagent" / "original" / "intake-proposal.json"
    ws = intake_ws(json.loads(original.read_text()))
    r = lorch_in(ws, "run", "--instruction", "Follow the roadmap", stdin="m\n1\n\n")
    assert r.returncode == 0, r.stderr
    assert "  2. docs/ideas.md (confidence 0.40)" in r.stdout
    assert "  notes: found on a wider search" in r.stdout
    assert "  1. T-201: Second step (src/second.py)" in r.stdout
    actions = [x["action"] for x in the_ledger(ws) if x["kind"] == "command"]
    assert actions[:2] == ["intake", "task_discovery"]
    assert decisions(ws)[-1]["payload"]["approved_plan"] == "ROADMAP.md"
    assert task_commands(ws) == [("T-201", a) for a in ("implement", "review", "update_spec")]


def test_a_bad_answer_at_a_prompt_is_asked_again(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    ws = intake_ws({"responses": {"intake": proposal("T-1")}})
    r = lorch_in(ws, "run", "--instruction", "x", stdin="9\n1\n7\nT-1\n")
    assert r.returncode == 0, r.stderr
    assert "lorch: expected a number from 1 to 1" in r.stdout
    assert "lorch: '7' is not a listed task" in r.stdout
    assert [d["payload"]["answer"] for d in decisions(ws)] == ["x", "1", "T-1"]


def test_malformed_proposal_fails_with_one_line(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    bad = {"events": [{"type": "orchestration.proposed_tasks", "payload": {"derived_tasks": []}}]}
    ws = intake_ws({"responses": {"intake": bad}})
    r = lorch_in(ws, "run", "--instruction", "x")
    assert r.returncode == 1
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("lorch: run failed: agent orchestration: orchestration.proposed_tasks:")
    assert "plan_candidates" in line


def test_error_event_not_retriable_fails_at_once(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    err = {"events": [{"type": "error", "payload": {"code": "no_plan", "retriable": False}}]}
    ws = intake_ws({"responses": {"intake": err}})
    r = lorch_in(ws, "run", "--instruction", "x")
    assert r.returncode == 1 and "(not retriable): no_plan" in r.stderr
    assert [x["kind"] for x in the_ledger(ws)].count("command") == 1


def test_retriable_error_is_retried_with_the_same_key(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    err = {"events": [{"type": "error", "payload": {"code": "busy", "retriable": True}}]}
    ws = intake_ws({"responses": {"intake": {"sequence": [err, proposal("T-1")]}}})
    r = lorch_in(ws, "run", "--instruction", "x", "--yes")
    # mockagent's sequence counts keys, not attempts: the retry gets the same answer
    # slot, so this only shows the retries keep the key and then give up cleanly.
    cmds = [x for x in the_ledger(ws) if x["kind"] == "command"]
    assert len({c["idempotency_key"] for c in cmds}) == 1
    assert [c["retry"]["attempt"] for c in cmds] == [0, 1, 2]
    assert r.returncode == 1 and "after 3 attempts: busy" in r.stderr


def test_resume_after_a_crash_mid_intake_asks_only_what_is_unanswered(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    ws = intake_ws()
    # Crash right after the first intake command is durable (records: run_started,
    # snapshot, 4 agents started, discovery, instruction, intake).
    r = lorch_in(ws, "run", stdin="Manage PLAN.md\n", env={"LORCH_CRASH_AT": "after:9"})
    assert r.returncode != 0
    assert the_ledger(ws)[-1]["action"] == "intake"
    r = lorch_in(ws, "resume", stdin="Hello\n1\n\n")
    assert r.returncode == 0, r.stderr
    assert "What should I do?" not in r.stdout
    ds = decisions(ws)
    assert [d["payload"]["step"] for d in ds] == ["instruction", "clarification", "plan", "tasks"]
    assert len({d["payload"]["question"] for d in ds}) == 4
    intakes = [x for x in the_ledger(ws) if x["kind"] == "command" and x["action"] == "intake"]
    assert intakes[0]["idempotency_key"] == intakes[1]["idempotency_key"]  # the resend
    assert task_commands(ws) == BOTH


def test_resume_after_a_torn_first_record_starts_with_intake(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    ws = intake_ws()
    r = lorch_in(ws, "run", stdin="Manage PLAN.md\n", env={"LORCH_CRASH_AT": "torn:1"})
    assert r.returncode != 0
    assert the_ledger(ws) == []  # record 1 never became whole
    r = lorch_in(ws, "resume", "--instruction", "Manage PLAN.md", "--answer", "Hello", "--yes")
    assert r.returncode == 0, r.stderr
    assert the_ledger(ws)[0]["payload"]["intake"] is True
    assert [d["payload"]["step"] for d in decisions(ws)] == [
        "instruction",
        "clarification",
        "plan",
        "tasks",
    ]
    assert task_commands(ws) == BOTH


def test_status_shows_the_decisions_and_where_each_task_stands(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    flags = ("--instruction", "Manage PLAN.md", "--answer", "Hello", "--yes")
    clean = intake_ws()
    assert lorch_in(clean, "run", *flags).returncode == 0
    # Crash once T-2 has started (T-1 done, nothing of T-2 sent yet), in a fresh copy.
    k = 1 + next(
        i
        for i, r in enumerate(the_ledger(clean))
        if r.get("event") == "system.task_started" and r["task_id"] == "T-2"
    )
    first_intake = next(x for x in the_ledger(clean) if x.get("action") == "intake")
    shutil.rmtree(clean)
    ws = intake_ws()
    r = lorch_in(ws, "run", *flags, env={"LORCH_CRASH_AT": f"after:{k}"})
    assert r.returncode != 0
    # The same tree and answers give the same discovery metadata, so the same key.
    again = next(x for x in the_ledger(ws) if x.get("action") == "intake")
    assert again["idempotency_key"] == first_intake["idempotency_key"]
    metadata = again["inputs"]["discovery_metadata"]
    assert metadata["strategy"] == "lorch-heuristic/1"
    assert metadata["search_paths"] == [".", "docs", "specs", "plans"]
    assert metadata["candidates"][0]["path"] == "PLAN.md"
    run_id = the_ledger(ws)[0]["payload"]["run_id"]
    status = lorch_in(ws, "status", "--run", run_id).stdout
    assert "[lorch] instruction approved: 'Manage PLAN.md' (flag)" in status
    assert "[lorch] clarification approved: 'Hello' (flag)" in status
    assert "[lorch] tasks approved: plan PLAN.md, tasks T-1, T-2 (flag)" in status
    assert "task T-1: done\ntask T-2: running\nstatus: running" in status
    assert lorch_in(ws, "resume").returncode == 0  # every question is answered
    # Intake has decided: the resume does not start the orchestration agent.
    records = the_ledger(ws)
    resumed = next(i for i, x in enumerate(records) if x.get("event") == "system.resumed")
    started = [
        x["payload"]["role"] for x in records[resumed:] if x.get("event") == "system.agent_started"
    ]
    assert sorted(started) == ["builder", "reviewer", "spec_maintainer"]
    status = lorch_in(ws, "status", "--run", run_id).stdout
    assert "task T-1: done\ntask T-2: done\nstatus: completed" in status
    assert task_commands(ws) == BOTH


def test_no_task_and_no_orchestration_agent_is_a_configuration_error(
    tmp_path: Path, lorch_in: Run
) -> None:
    ws = tmp_path / "ws"
    from lorch.app.scenarios import materialize

    materialize("happy-path", ws)
    cfg = json.loads((ws / "lorch.json").read_text())
    del cfg["task"]
    (ws / "lorch.json").write_text(json.dumps(cfg))
    r = lorch_in(ws, "run")
    assert r.returncode == 2
    assert "no task, and intake needs an orchestration agent" in r.stderr
    assert not (ws / "events").exists() or not list((ws / "events").iterdir())


def test_the_demo_asks_nothing(tmp_path: Path, lorch_in: Run) -> None:
    ws = tmp_path / "demo"
    r = lorch_in(ws, "run")  # stdin is /dev/null: a prompt would decline
    assert r.returncode == 0, r.stderr
    assert "lorch>" not in r.stdout
    assert not decisions(ws)


def test_task_from_the_tasks_list_reaches_the_builder(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    ws = intake_ws()
    cfg = json.loads((ws / "lorch.json").read_text())
    cfg["tasks"] = [
        {"id": "T-1", "goal": "Greeting module"},
        {"id": "T-2", "goal": "Farewell module", "spec_path": "PLAN.md"},
    ]
    (ws / "lorch.json").write_text(json.dumps(cfg))
    r = lorch_in(ws, "run", "--task", "T-2")
    assert r.returncode == 0, r.stderr
    assert not decisions(ws)  # a task is named: no intake, and no orchestration agent
    started = [
        x["payload"]["role"] for x in the_ledger(ws) if x.get("event") == "system.agent_started"
    ]
    assert "orchestration" not in started
    implement = next(x for x in the_ledger(ws) if x.get("action") == "implement")
    assert implement["inputs"]["task"] == {
        "id": "T-2",
        "goal": "Farewell module",
        "spec_path": "PLAN.md",
    }
    assert task_commands(ws) == [("T-2", a) for a in ("implement", "review", "update_spec")]


def test_verify_checks_every_task_of_the_run(intake_ws: Callable[..., Path], lorch_in: Run) -> None:
    ws = intake_ws()
    assert lorch_in(ws, "run", "--instruction", "x", "--answer", "y", "--yes").returncode == 0
    (path,) = sorted((ws / "events").glob("run-*.ndjson"))
    lines = path.read_bytes().split(b"\n")
    kept = [ln for ln in lines if not (b'"spec.updated"' in ln and b'"task_id":"T-2"' in ln)]
    assert len(kept) == len(lines) - 1
    path.write_bytes(b"\n".join(kept))
    r = lorch_in(ws, "verify", "--run", path.stem)
    assert r.returncode == 1
    assert "task T-2: no spec.updated or spec.no_changes_needed event" in r.stdout
    assert "task T-1:" not in r.stdout


def test_a_secret_in_an_answer_never_reaches_the_ledger(
    intake_ws: Callable[..., Path], lorch_in: Run
) -> None:
    # Intake's records are lorch's own: built and redacted by the one builder of
    # system events, like every other (issue 23 point 5).
    secret = "sk-intake-0123456789abcdef"
    ws = intake_ws()
    r = lorch_in(
        ws,
        "run",
        "--instruction",
        f"Manage PLAN.md with key {secret}",
        "--answer",
        "Hello",
        "--plan",
        "PLAN.md",
        "--tasks",
        "T-2",
        env={"ANTHROPIC_API_KEY": secret},
    )
    assert r.returncode == 0, r.stderr
    (path,) = sorted((ws / "events").glob("run-*.ndjson"))
    raw = path.read_text()
    assert "Manage PLAN.md with key" in raw
    assert secret not in raw
    # What lorch keeps of the run: the transcript too.
    for kept in (ws / "transcripts").glob("*.txt"):
        assert secret not in kept.read_text()
