"""``lorch run`` / ``resume`` / ``doctor`` with ACP roles (the scripted ACP agent), end to end."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from lorch.app.scenarios import load, materialize
from lorch.store import ledger
from lorch.wire import vocabulary

pytestmark = pytest.mark.e2e

SCENARIO = "acp-exactly-once"


def _records(ws: Path) -> list[dict[str, Any]]:
    (path,) = sorted((ws / "events").glob("run-*.ndjson"))
    return list(ledger.read(path))


def _terminals(ws: Path) -> list[str]:
    out = []
    for r in _records(ws):
        if r.get("event") in vocabulary.TERMINAL_EVENTS and r["from"]["agent_type"] != "system":
            out.append(r["event"] + (f":{r['status']}" if r["event"] == "review.completed" else ""))
    return out


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "ws"
    materialize(SCENARIO, w)
    return w


def _edit(ws: Path, change: Any) -> None:
    cfg = json.loads((ws / "lorch.json").read_text())
    change(cfg)
    (ws / "lorch.json").write_text(json.dumps(cfg))


def _script(ws: Path, role: str, change: Any) -> None:
    path = ws / "agents" / f"{role}.json"
    script = json.loads(path.read_text())
    change(script)
    path.unlink()  # the scenario's copy may be read-only or a link
    path.write_text(json.dumps(script))


def test_acp_run_completes_with_lorch_built_events(ws: Path, lorch) -> None:  # type: ignore[no-untyped-def]
    r = lorch("run", "--workspace", str(ws), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    expected = load(SCENARIO)["expected"]
    assert _terminals(ws) == expected["terminal_events"]
    for f in expected["files"]:
        assert (ws / f).is_file(), f
    # Each turn's effect once.
    assert (ws / "journal/builder.txt").read_text() == "implement ran\nimplement_changes ran\n"
    assert (ws / "journal/reviewer.txt").read_text() == "review 1 ran\nreview 2 ran\n"
    recs = _records(ws)
    done = [r for r in recs if r.get("event") == "builder.completed"]
    assert {a["path"] for a in done[0]["artifacts"]} == {
        "src/greeting.py",
        "tests/test_greeting.py",
        "journal/builder.txt",
    }
    assert done[0]["payload"]["tests"]["status"] == "pass"
    assert done[0]["payload"]["tests"]["summary"].endswith(": exit 0: 1 passed")
    # The live transcript shows what the agents did, and lorch's answers.
    out = r.stdout
    assert "[builder] Writing the greeting module." in out
    assert "[builder] tool edit: Write src/greeting.py [completed]" in out
    assert (
        "[lorch] builder: permission edit 'Write tests/test_greeting.py' "
        "(tests/test_greeting.py): allowed" in out
    )
    assert "[builder] plan: [pending] write the module; [pending] write its test" in out
    assert "[builder] tests pass:" in out
    assert "[reviewer] review.completed changes_requested (reviews/T-0042.json)" in out
    assert out.rstrip().endswith("[lorch] DONE")
    run_id = sorted((ws / "events").glob("run-*.ndjson"))[0].stem
    for role in ("builder", "reviewer", "spec_maintainer"):
        log = (ws / "logs" / role / f"{run_id}.ndjson").read_text()
        assert '"method": "session/prompt"' in log and '"method": "session/update"' in log
    v = lorch("verify", "--workspace", str(ws), "--run", run_id)
    assert v.returncode == 0, v.stdout


def test_every_permission_decision_is_a_ledger_record(ws: Path, tmp_path: Path, lorch) -> None:  # type: ignore[no-untyped-def]
    outside = tmp_path / "outside.txt"

    def ask_twice(script: dict[str, Any]) -> None:
        steps = script["turns"][0]["calls"][0]
        at = next(i for i, s in enumerate(steps) if "permission" in s) + 1
        steps.insert(
            at,
            {
                "permission": {"kind": "edit", "title": "Write outside", "paths": [str(outside)]},
                "then": [{"write": str(outside), "content": "escaped"}],
                "else": [{"text": "not allowed out there"}],
            },
        )

    _script(ws, "builder", ask_twice)
    r = lorch("run", "--workspace", str(ws), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert not outside.exists()
    recs = _records(ws)
    (implement,) = [x for x in recs if x.get("kind") == "command" and x["action"] == "implement"]
    mine = [
        x
        for x in recs
        if x.get("event") == "system.permission"
        and x["correlation_id"] == implement["correlation_id"]
    ]
    assert [x["payload"] for x in mine] == [
        {
            "role": "builder",
            "idempotency_key": implement["idempotency_key"],
            "attempt": 0,
            "request": "session/request_permission",
            "kind": "edit",
            "title": "Write tests/test_greeting.py",
            "paths": ["tests/test_greeting.py"],
            "allowed": True,
            "option": "allow",
            "rule": "edit: workspace",
            "reason": "edit inside the workspace is allowed",
        },
        {
            "role": "builder",
            "idempotency_key": implement["idempotency_key"],
            "attempt": 0,
            "request": "session/request_permission",
            "kind": "edit",
            "title": "Write outside",
            "paths": [str(outside)],
            "allowed": False,
            "option": "reject",
            "rule": "edit: workspace",
            "reason": f"{outside} is outside the workspace",
        },
    ]
    assert all(x["from"] == {"agent_type": "system"} for x in mine)
    # Recorded before the turn's answer, in the order they were made.
    (done,) = [
        i
        for i, x in enumerate(recs)
        if x.get("event") == "builder.completed"
        and x["correlation_id"] == implement["correlation_id"]
    ]
    assert all(recs.index(x) < done for x in mine)
    # The terminal command of round 2 is a decision too.
    runs = [x["payload"] for x in recs if x.get("event") == "system.permission"][2:]
    assert [(d["request"], d["kind"], d["allowed"]) for d in runs] == [
        ("terminal/create", "execute", True)
    ]
    assert f"[lorch] builder: permission edit 'Write outside' ({outside}): refused" in r.stdout
    run_id = sorted((ws / "events").glob("run-*.ndjson"))[0].stem
    assert "permission edit 'Write outside'" in (ws / "transcripts" / f"{run_id}.txt").read_text()
    v = lorch("verify", "--workspace", str(ws), "--run", run_id)
    assert v.returncode == 0, v.stdout


def test_agent_crash_mid_turn_is_rolled_back_and_resent_with_the_same_key(
    ws: Path,
    tmp_path: Path,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    # In the workspace (a hidden directory: never rolled back): a sandboxed agent
    # writes nowhere else.
    state = ws / ".agent-state"

    def crash_once(script: dict[str, Any]) -> None:
        steps = script["turns"][0]["calls"][0]
        at = next(i for i, s in enumerate(steps) if "append" in s) + 1
        steps.insert(at, {"exit": 9, "once": "crashed"})

    _script(ws, "builder", crash_once)
    _edit(ws, lambda c: c["agents"]["builder"].update(env={"ACP_AGENT_STATE": str(state)}))
    r = lorch("run", "--workspace", str(ws), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (state / "crashed.done").exists()
    # The half-done turn was undone before it was sent again: its append is there once.
    assert (ws / "journal/builder.txt").read_text() == "implement ran\nimplement_changes ran\n"
    recs = _records(ws)
    implements = [r for r in recs if r.get("kind") == "command" and r["action"] == "implement"]
    assert len(implements) == 2
    assert len({r["idempotency_key"] for r in implements}) == 1
    assert any(r.get("event") == "system.agent_restarted" for r in recs)
    assert "exited (code 9)" in r.stdout


def test_missing_verdict_fails_the_attempt_and_is_retried(
    ws: Path,
    tmp_path: Path,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    state = tmp_path / "agent-state"

    def forget_first(script: dict[str, Any]) -> None:
        turn = script["turns"][0]
        turn["calls"] = [[{"text": "I looked; all fine."}], *turn["calls"]]

    _script(ws, "reviewer", forget_first)
    _edit(ws, lambda c: c["agents"]["reviewer"].update(env={"ACP_AGENT_STATE": str(state)}))
    r = lorch("run", "--workspace", str(ws), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    errors = [r for r in _records(ws) if r.get("event") == "error"]
    assert [e["payload"]["message"] for e in errors] == [
        "reviews/T-0042.json: missing: the agent wrote no verdict file"
    ]
    assert "reviews/T-0042.json: missing: the agent wrote no verdict file" in r.stdout


def test_auth_required_stops_the_run_with_one_line_and_exit_2(ws: Path, lorch) -> None:  # type: ignore[no-untyped-def]
    def need_auth(script: dict[str, Any]) -> None:
        script["auth"] = {
            "required": True,
            "unless_env": "SCRIPTED_KEY",
            "methods": [{"id": "key", "name": "API key", "description": "set SCRIPTED_KEY"}],
        }

    _script(ws, "builder", need_auth)
    r = lorch("run", "--workspace", str(ws), env={"SCRIPTED_KEY": "k-1234"}, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert (
        "agent builder" in lines[0]
        and "needs authentication for implement of task T-0042" in lines[0]
    )
    assert "auth methods: API key (set SCRIPTED_KEY)" in lines[0]
    implements = [r for r in _records(ws) if r.get("kind") == "command"]
    assert len(implements) == 1  # not retried
    # SCRIPTED_KEY was in lorch's environment but not in pass_env: it did not reach the agent.
    _edit(ws, lambda c: c["agents"]["builder"].update(pass_env=["SCRIPTED_KEY"]))
    # The fix is a change of lorch.json: resume names it and applies it only when told.
    r = lorch("resume", "--workspace", str(ws), env={"SCRIPTED_KEY": "k-1234"}, timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "agents.builder.pass_env" in r.stderr and "--accept-config-change" in r.stderr
    r = lorch(
        "resume",
        "--workspace",
        str(ws),
        "--accept-config-change",
        env={"SCRIPTED_KEY": "k-1234"},
        timeout=300,
    )
    assert r.returncode == 0, r.stdout + r.stderr


def test_timeout_cancels_the_turn_then_ends_the_group(ws: Path, lorch) -> None:  # type: ignore[no-untyped-def]
    _script(ws, "builder", lambda s: s["turns"][0]["calls"][0].insert(0, {"hang": "forever"}))
    _edit(
        ws,
        lambda c: (
            c["agents"]["builder"].update(timeouts_s={"implement": 1}),
            c["policy"].update(max_attempts=2),
        ),
    )
    r = lorch("run", "--workspace", str(ws), timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    recs = _records(ws)
    fails = [r["payload"] for r in recs if r.get("event") == "system.command_failed"]
    assert [f["code"] for f in fails] == ["timeout", "timeout"]
    run_id = recs[0]["payload"]["run_id"]
    log = (ws / "logs/builder" / f"{run_id}.ndjson").read_text()
    assert log.count('"method": "session/cancel"') == 2
    for r in recs:
        if r.get("event") == "system.agent_started":
            with pytest.raises(ProcessLookupError):
                os.killpg(r["payload"]["pgid"], 0)


def test_doctor_reports_the_initialize_answer_or_the_failure(ws: Path, lorch) -> None:  # type: ignore[no-untyped-def]
    r = lorch("doctor", "--workspace", str(ws), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "scripted-builder 1.0, ACP protocol 1, loadSession: no, auth methods: none" in r.stdout
    _script(
        ws,
        "reviewer",
        lambda s: s.update(
            auth={
                "required": True,
                "methods": [
                    {"id": "login", "name": "Log in", "description": "run the login command"}
                ],
            }
        ),
    )
    _edit(
        ws,
        lambda c: c["agents"]["spec_maintainer"].update(
            cmd=["python3", "-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(4)"]
        ),
    )
    r = lorch("doctor", "--workspace", str(ws), timeout=300)
    assert r.returncode == 1
    assert (
        'needs authentication for a session: it said "Authentication required (no credentials)"; '
        "a variable it needs must be listed in $.agents.reviewer.pass_env or env; "
        "auth methods: Log in (run the login command)"
    ) in r.stdout
    assert "exited (code 4) before ACP initialize completed; its stderr said: boom" in r.stdout
