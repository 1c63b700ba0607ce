"""lorch's ACP port against the scripted ACP agent: one behaviour per test (issue 12)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from lorch.agents.transport import SendContext
from lorch.wire import protocol, schemas

from .conftest import Harness, command, decisions, lines, shown


def _valid(msg: dict) -> None:  # type: ignore[type-arg]
    protocol.validate_message(msg, source="test")


def test_builder_turn_artifacts_are_the_files_it_changed(acp: Harness) -> None:
    (acp.workspace / "old.txt").write_text("old\n")
    (acp.workspace / "gone.txt").write_text("bye\n")
    script = acp.script(
        [
            {
                "calls": [
                    [
                        {"text": "Writing the ", "chunks": 3},
                        {"text": "greeting now."},
                        {"write": "src/greet.py", "content": "print('hi')\n"},
                        {"write": "src/via_fs.py", "content": "x = 1\n", "via": "fs"},
                        {"delete": "gone.txt"},
                        {"plan": ["write greet", "test it"]},
                    ]
                ]
            }
        ]
    )
    port = acp.port(script)
    assert port.init is not None and port.init.agent_info is not None
    items, end = acp.turn(port, command())
    ev = end.message
    assert ev is not None and ev["event"] == "builder.completed"
    _valid(ev)
    paths = {a["path"]: a for a in ev["artifacts"]}
    assert sorted(paths) == ["src/greet.py", "src/via_fs.py"]
    assert paths["src/greet.py"]["size"] == len("print('hi')\n")
    assert ev["payload"]["deleted"] == ["gone.txt"]
    assert ev["payload"]["tests"] == {"status": "pass", "summary": "no test command configured"}
    said = lines(items)
    # Message chunks are coalesced into one line; tool calls and the plan have theirs.
    assert "Writing the greeting now." in said
    assert any(s.startswith("tool edit: Write src/greet.py [") for s in said)
    assert any(s.startswith("plan: [pending] write greet") for s in said)
    assert "tests: no test command configured" in said
    for i in items:
        if i.message is not None:
            _valid(i.message)
    # The whole exchange is in the agent's log.
    log = (acp.workspace / "logs/builder/run-1.ndjson").read_text().splitlines()
    methods = {json.loads(x).get("message", {}).get("method") for x in log}
    assert {
        "initialize",
        "session/new",
        "session/prompt",
        "session/update",
        "fs/write_text_file",
    } <= methods


def test_test_command_result_is_payload_tests(acp: Harness) -> None:
    script = acp.script([{"calls": [[{"write": "ok.txt", "content": "1"}]]}])
    port = acp.port(script, test_cmd="test -f ok.txt && echo all good")
    _, end = acp.turn(port, command())
    assert end.message is not None
    assert end.message["payload"]["tests"] == {
        "status": "pass",
        "summary": "test -f ok.txt && echo all good: exit 0: all good",
    }
    port2 = acp.port(script, test_cmd=["sh", "-c", "echo 2 failed; exit 3"])
    _, end = acp.turn(port2, command())
    assert end.message is not None
    assert end.message["payload"]["tests"] == {
        "status": "fail",
        "summary": "sh -c echo 2 failed; exit 3: exit 3: 2 failed",
    }


def test_review_verdict_becomes_review_completed(acp: Harness) -> None:
    verdict = {
        "status": "changes_requested",
        "summary": "rename x",
        "comments": [{"path": "a.py", "line": 1, "text": "x is vague"}],
    }
    script = acp.script(
        [
            {
                "match": "Review round",
                "calls": [[{"write": "reviews/{task_id}.json", "json": verdict}]],
            }
        ]
    )
    port = acp.port(script, role="reviewer")
    _, end = acp.turn(port, command("review"))
    ev = end.message
    assert ev is not None and ev["event"] == "review.completed"
    _valid(ev)
    assert ev["status"] == "changes_requested"
    assert ev["payload"]["review_path"] == "reviews/T-1.json"
    assert [a["path"] for a in ev["artifacts"]] == ["reviews/T-1.json"]


def test_spec_verdicts_become_spec_events(acp: Harness) -> None:
    for status, name in [
        ("updated", "spec.updated"),
        ("no_changes_needed", "spec.no_changes_needed"),
        ("changes_requested", "spec.changes_requested"),
    ]:
        script = acp.script(
            [
                {
                    "calls": [
                        [
                            {
                                "write": "spec_notes/{task_id}.json",
                                "json": {"status": status, "summary": "s"},
                            }
                        ]
                    ]
                }
            ]
        )
        port = acp.port(script, role="spec_maintainer")
        _, end = acp.turn(port, command("update_spec"))
        assert end.message is not None and end.message["event"] == name
        assert end.message["payload"]["notes_path"] == "spec_notes/T-1.json"
        _valid(end.message)


def test_missing_or_invalid_verdict_fails_the_attempt_naming_file_and_problem(
    acp: Harness,
) -> None:
    # A verdict left from the last round does not count: this turn must write one.
    (acp.workspace / "reviews").mkdir()
    (acp.workspace / "reviews/T-1.json").write_text('{"status": "approved", "summary": "old"}')
    script = acp.script(
        [
            {
                "calls": [
                    [{"text": "I think it is fine"}],
                    [{"write": "reviews/{task_id}.json", "content": "{not json"}],
                    [
                        {
                            "write": "reviews/{task_id}.json",
                            "json": {"status": "maybe", "summary": "s"},
                        }
                    ],
                ]
            }
        ]
    )
    port = acp.port(script, role="reviewer")
    messages = []
    for _ in range(3):
        _, end = acp.turn(port, command("review"))
        assert end.message is not None and end.message["event"] == "error"
        _valid(end.message)
        messages.append(end.message["payload"]["message"])
    assert messages[0] == "reviews/T-1.json: missing: the agent wrote no verdict file"
    assert messages[1].startswith("reviews/T-1.json: invalid JSON at line 1 column 2")
    assert messages[2].startswith("reviews/T-1.json: $.status: 'maybe' is not one of")


def test_permissions_follow_the_policy_and_each_decision_is_recorded(acp: Harness) -> None:
    outside = acp.tmp / "outside.txt"
    script = acp.script(
        [
            {
                "calls": [
                    [
                        {
                            "permission": {
                                "kind": "edit",
                                "title": "Edit inside",
                                "paths": ["a.txt"],
                            },
                            "then": [{"write": "a.txt", "content": "in"}],
                        },
                        {
                            "permission": {
                                "kind": "edit",
                                "title": "Edit outside",
                                "paths": [str(outside)],
                            },
                            "then": [{"write": str(outside), "content": "out"}],
                        },
                        {
                            "permission": {"kind": "execute", "title": "Run ls"},
                            "then": [{"text": "ran"}],
                        },
                        {
                            "permission": {"kind": "fetch", "title": "Fetch url"},
                            "then": [{"text": "fetched"}],
                        },
                        {
                            "permission": {"kind": "fetch", "title": "Fetch again"},
                            "else": [{"text": "no"}],
                        },
                    ]
                ]
            }
        ]
    )
    port = acp.port(script)
    items, _ = acp.turn(port, command())
    said = [shown(d) for d in decisions(items)]
    assert said == [
        "permission edit 'Edit inside' (a.txt): allowed "
        "(edit: workspace: edit inside the workspace is allowed)",
        f"permission edit 'Edit outside' ({outside}): refused "
        f"(edit: workspace: {outside} is outside the workspace)",
        "permission execute 'Run ls': allowed (execute: allow: execute is allowed)",
        "permission fetch 'Fetch url': refused (fetch: deny: fetch is not allowed)",
        "permission fetch 'Fetch again': refused (fetch: deny: fetch is not allowed)",
    ]
    first = decisions(items)[0]
    assert first["request"] == "session/request_permission"
    assert first["paths"] == ["a.txt"] and first["option"] == "allow"
    assert [d["option"] for d in decisions(items)[1:]] == ["reject", "allow"] + ["reject"] * 2
    assert (acp.workspace / "a.txt").read_text() == "in"
    assert not outside.exists()
    assert "ran" in lines(items) and "fetched" not in lines(items) and "no" in lines(items)
    # Configurable per tool kind.
    port2 = acp.port(script, permissions={"fetch": "allow", "execute": "deny"})
    items, _ = acp.turn(port2, command())
    said = [shown(d) for d in decisions(items)]
    assert "permission execute 'Run ls': refused (execute: deny: execute is not allowed)" in said
    assert "permission fetch 'Fetch url': allowed (fetch: allow: fetch is allowed)" in said


def test_fs_requests_stay_inside_the_workspace(acp: Harness) -> None:
    (acp.workspace / "in.txt").write_text("inside\n")
    (acp.tmp / "secret.txt").write_text("secret\n")
    (acp.workspace / "link").symlink_to(acp.tmp)
    script = acp.script(
        [
            {
                "calls": [
                    [
                        {"read": "in.txt"},
                        {"read": "../secret.txt"},
                        {"read": "link/secret.txt"},
                        {"write": "../escaped.txt", "content": "x", "via": "fs"},
                        {"write": "link/escaped.txt", "content": "x", "via": "fs"},
                        {"write": "deep/new.txt", "content": "ok", "via": "fs"},
                    ]
                ]
            }
        ]
    )
    port = acp.port(script)
    items, end = acp.turn(port, command())
    said = lines(items)
    assert "read: inside" in said
    assert not (acp.tmp / "escaped.txt").exists()
    assert (acp.workspace / "deep/new.txt").read_text() == "ok"
    refused = [x for x in said if x.startswith("refused fs/")]
    assert len(refused) == 4, said
    assert any("contains '..'" in x for x in refused)
    assert any("through a symlink" in x for x in refused)
    assert not any("secret" in x and x.startswith("read:") for x in said)
    assert end.message is not None
    assert [a["path"] for a in end.message["artifacts"]] == ["deep/new.txt"]


def test_terminal_commands_run_in_the_workspace(acp: Harness) -> None:
    script = acp.script([{"calls": [[{"terminal": ["sh", "-c", "pwd; echo made > t.txt"]}]]}])
    port = acp.port(script)
    items, end = acp.turn(port, command())
    said = lines(items)
    assert f"exit 0: {acp.workspace}\n" in said or any(
        x.startswith("exit 0:") and str(acp.workspace) in x for x in said
    )
    (run,) = decisions(items)
    assert run["request"] == "terminal/create" and run["allowed"] is True
    assert run["title"].startswith("sh -c pwd") and run["option"] is None
    assert end.message is not None
    assert [a["path"] for a in end.message["artifacts"]] == ["t.txt"]


def test_a_notification_the_sdk_rejects_is_logged_and_skipped(acp: Harness) -> None:
    script = acp.script(
        [
            {
                "calls": [
                    [
                        {
                            "raw_update": {
                                "sessionUpdate": "usage_update",
                                "used": None,
                                "size": 100,
                            }
                        },
                        {"raw_update": {"sessionUpdate": "no_such_update"}},
                        {"text": "still here"},
                    ]
                ]
            }
        ]
    )
    port = acp.port(script)
    items, end = acp.turn(port, command())
    assert end.message is not None and end.message["event"] == "builder.completed"
    assert "still here" in lines(items)
    log = [
        json.loads(x)
        for x in (acp.workspace / "logs/builder/run-1.ndjson").read_text().splitlines()
    ]
    skipped = [x for x in log if x.get("skipped")]
    assert len(skipped) == 2 and "ValidationError" in skipped[0]["error"]


def test_auth_required_names_role_command_and_methods(acp: Harness) -> None:
    auth = {
        "required": True,
        "unless_env": "SCRIPTED_KEY",
        "methods": [{"id": "key", "name": "API key", "description": "set SCRIPTED_KEY"}],
    }
    script = acp.script([{"calls": [[{"text": "hello"}]]}], auth=auth)
    port = acp.port(script)
    _, end = acp.turn(port, command())
    ev = end.message
    assert ev is not None and ev["event"] == "error"
    assert ev["payload"]["code"] == "auth_required"
    msg = ev["payload"]["message"]
    assert msg == (
        f"agent builder ({port.argv[0]}) needs authentication for implement of task T-1: "
        'it said "Authentication required (no credentials)"; a variable it needs must be '
        "listed in $.agents.builder.pass_env or env; auth methods: API key (set SCRIPTED_KEY)"
    )
    # pass_env lets the variable through; nothing else of lorch's environment is passed.
    import os

    os.environ["SCRIPTED_KEY"] = "k-123456"
    os.environ["LORCH_TEST_UNPASSED"] = "1"
    try:
        port2 = acp.port(script, pass_env=("SCRIPTED_KEY",))
        _, end = acp.turn(port2, command())
        assert end.message is not None and end.message["event"] == "builder.completed"
        env = Path(f"/proc/{port2.pid}/environ").read_bytes().split(b"\0")
        assert b"SCRIPTED_KEY=k-123456" in env
        assert not any(x.startswith(b"LORCH_TEST_UNPASSED=") for x in env)
    finally:
        del os.environ["SCRIPTED_KEY"], os.environ["LORCH_TEST_UNPASSED"]


def test_agent_exit_mid_turn_is_one_exit_item(acp: Harness) -> None:
    script = acp.script([{"calls": [[{"text": "starting"}, {"exit": 7}]]}])
    port = acp.port(script)
    _, end = acp.turn(port, command())
    assert end.kind == "exit"
    assert port.kill() == 7
    assert acp.inbox.get(0.3) is None  # nothing after the exit


def test_kill_cancels_the_turn_then_ends_the_group(acp: Harness) -> None:
    script = acp.script([{"calls": [[{"text": "thinking"}, {"hang": True}]]}])
    port = acp.port(script)
    cmd = command()
    assert port.send(cmd, protocol.encode(cmd), SendContext())
    deadline = time.monotonic() + 30
    while not acp.journal():  # the agent is in its turn
        assert time.monotonic() < deadline
        acp.inbox.get(0.05)
    rc = port.kill()
    assert rc is not None and not port.alive()
    log = (acp.workspace / "logs/builder/run-1.ndjson").read_text()
    assert '"method": "session/cancel"' in log


def test_stderr_is_drained_into_the_log_and_secrets_redacted(acp: Harness) -> None:
    script = acp.script(
        [
            {
                "calls": [
                    [{"stderr": f"line {i} token s3cr3t-value"} for i in range(2000)]
                    + [{"text": "done"}]
                ]
            }
        ]
    )
    port = acp.port(script, secrets=["s3cr3t-value"])
    _, end = acp.turn(port, command())
    assert end.message is not None and end.message["event"] == "builder.completed"
    port.stop()
    log = (acp.workspace / "logs/builder/run-1.ndjson").read_text()
    assert log.count('"stream": "stderr"') == 2000
    assert "s3cr3t-value" not in log and "line 1999 token ***" in log


def test_verdict_schemas_are_the_documented_shapes() -> None:
    assert schemas.is_valid("review-verdict", {"status": "approved", "summary": "ok"})
    assert not schemas.is_valid("review-verdict", {"status": "approved"})


def test_what_the_agent_says_is_redacted_and_cannot_drive_the_terminal(acp: Harness) -> None:
    script = acp.script(
        [
            {
                "calls": [
                    [
                        {"text": "key sk-live-123456 then \x1b[2Jcleared"},
                        {
                            "permission": {
                                "kind": "edit",
                                "title": "Edit \x1b]0;pwned\x07 sk-live-123456",
                                "paths": ["a.txt"],
                            }
                        },
                    ]
                ]
            }
        ]
    )
    port = acp.port(script, secrets=["sk-live-123456"])
    items, end = acp.turn(port, command())
    said = lines(items)
    assert "key *** then \\x1b[2Jcleared" in said
    assert not any("\x1b" in x or "\x07" in x for x in said)
    assert decisions(items)[0]["title"] == "Edit \\x1b]0;pwned\\x07 ***"
    for i in [*items, end]:
        assert i.message is None or "sk-live-123456" not in json.dumps(i.message)
