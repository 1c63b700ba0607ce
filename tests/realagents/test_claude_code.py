"""The real Claude Code agent (its ACP adapter, pinned by npm), offline.

A scripted model endpoint plays the model; the agent's own tools (Write, Edit,
Bash) do the work, so the files on disk are the agent's doing. The client is
the agent-client-protocol SDK's, answering permissions as lorch's default policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.realagents import adapters
from tests.realagents.acp_client import prompt_once

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

IK = "ik:" + "5e" * 32


def _builder_script() -> dict[str, Any]:
    return {
        "steps": [
            {
                "name": "write",
                "when": {"prompt_contains": IK, "turn": 0},
                "reply": [
                    {"type": "text", "text": "I'll create hello.py."},
                    {
                        "type": "tool_use",
                        "name": "Write",
                        "input": {"file_path": "{cwd}/hello.py", "content": "print('hello')\n"},
                    },
                ],
            },
            {
                "name": "edit",
                "when": {"after_tool": "Write", "tool_error": False},
                "reply": [
                    {
                        "type": "tool_use",
                        "name": "Edit",
                        "input": {
                            "file_path": "{cwd}/hello.py",
                            "old_string": "'hello'",
                            "new_string": "'hello, world'",
                        },
                    }
                ],
            },
            {
                "name": "bash",
                "when": {"after_tool": "Edit", "tool_error": False},
                "reply": [
                    {
                        "type": "tool_use",
                        "name": "Bash",
                        "input": {
                            "command": "python3 hello.py > out.txt",
                            "description": "Run hello.py",
                        },
                    }
                ],
            },
            {
                "name": "done",
                "when": {"after_tool": "Bash", "tool_error": False},
                "reply": [{"type": "text", "text": "hello.py prints hello, world."}],
            },
            {
                "name": "refused",
                "when": {"tool_error": True},
                "reply": [{"type": "text", "text": "That was refused; stopping."}],
            },
        ]
    }


def _strays(endpoint: Any) -> list[Any]:
    return [r for r in endpoint.requests if r.note.startswith("stray")]


def test_claude_code_writes_edits_and_runs_offline(
    claude_acp: list[str], endpoint_for: Any, tmp_path: Path
) -> None:
    endpoint = endpoint_for(_builder_script())
    workspace = tmp_path / "ws"
    env = adapters.offline_env(endpoint.url, tmp_path / "home")
    turn = prompt_once(
        claude_acp,
        workspace,
        f"Implement task T-1 (command {IK}): write hello.py that prints hello, world.",
        env,
        stderr=tmp_path / "agent.stderr",
    )
    assert turn.agent["agentInfo"]["name"] == adapters.ADAPTER
    assert turn.agent["agentInfo"]["version"] == adapters.adapter_version()
    assert turn.stop_reason == "end_turn"
    # The agent's tools changed the workspace.
    assert (workspace / "hello.py").read_text() == "print('hello, world')\n"
    assert (workspace / "out.txt").read_text() == "hello, world\n"
    assert sorted(p.name for p in workspace.iterdir()) == ["hello.py", "out.txt"]
    # Every model call was scripted, in order, and belongs to the command.
    messages = [r for r in endpoint.requests if r.path == "/v1/messages"]
    assert [r.step for r in messages] == ["write", "edit", "bash", "done"]
    assert endpoint.count(IK) == 4
    # Each tool call was asked for, allowed by policy, and completed.
    assert [(d.kind, d.option) for d in turn.decisions] == [
        ("edit", "allow"),
        ("edit", "allow"),
        ("execute", "allow"),
    ]
    calls = list(turn.tool_calls().values())
    assert [(c["kind"], c["status"]) for c in calls] == [
        ("edit", "completed"),
        ("edit", "completed"),
        ("execute", "completed"),
    ]
    assert "hello.py prints hello, world." in turn.text()
    # Nothing else left the machine: whatever tried went through the endpoint and was refused.
    assert all(r.status == 403 for r in _strays(endpoint)), _strays(endpoint)


def test_claude_code_is_refused_a_write_outside_the_workspace(
    claude_acp: list[str], endpoint_for: Any, tmp_path: Path
) -> None:
    outside = tmp_path / "outside.txt"
    script = _builder_script()
    script["steps"][0]["reply"][1]["input"]["file_path"] = str(outside)
    endpoint = endpoint_for(script)
    workspace = tmp_path / "ws"
    turn = prompt_once(
        claude_acp,
        workspace,
        f"Implement task T-1 (command {IK}).",
        adapters.offline_env(endpoint.url, tmp_path / "home"),
        stderr=tmp_path / "agent.stderr",
    )
    assert turn.stop_reason == "end_turn"
    assert [(d.kind, d.paths, d.option) for d in turn.decisions] == [
        ("edit", [str(outside)], "reject")
    ]
    assert not outside.exists()
    assert list(workspace.iterdir()) == []
    # The agent told the model the tool was refused, and the script answered that.
    assert [r.step for r in endpoint.requests if r.path == "/v1/messages"] == ["write", "refused"]
