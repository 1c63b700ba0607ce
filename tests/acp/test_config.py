"""The ACP role shape of lorch.json (issue 12, point 1) and the prompt templates (point 3)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from lorch.agents.acp import prompts
from lorch.app import config
from lorch.wire.errors import ConfigError

BASE: dict[str, Any] = {
    "version": "1",
    "task": {"id": "T-1", "goal": "greet", "test_cmd": ["pytest", "-q"]},
    "agents": {
        "builder": {
            "transport": "acp",
            "cmd": ["claude-agent-acp"],
            "env": {"IS_SANDBOX": "1"},
            "pass_env": ["ANTHROPIC_API_KEY"],
            "permissions": {"edit": "workspace", "execute": "allow", "fetch": "deny"},
            "prompts": {"implement": "Build $task_id: $goal ($$0 budget)"},
        },
        "reviewer": {"cmd": ["mockagent"]},
        "spec_maintainer": {"transport": "ndjson", "cmd": ["mockagent"]},
    },
}


def _parse(raw: dict[str, Any]) -> config.Config:
    return config.parse(raw, Path("/w/lorch.json"))


def test_acp_role_is_parsed() -> None:
    c = _parse(copy.deepcopy(BASE))
    b = c.agents["builder"]
    assert b.transport == "acp"
    assert b.pass_env == ("ANTHROPIC_API_KEY",)
    assert b.permissions == {"edit": "workspace", "execute": "allow", "fetch": "deny"}
    assert c.agents["reviewer"].transport == "ndjson"
    assert c.task is not None and c.task["test_cmd"] == ["pytest", "-q"]


@pytest.mark.parametrize("field", ["permissions", "prompts"])
def test_acp_only_fields_are_refused_on_ndjson_roles(field: str) -> None:
    raw = copy.deepcopy(BASE)
    raw["agents"]["reviewer"][field] = BASE["agents"]["builder"][field]
    with pytest.raises(
        ConfigError, match=rf'\$\.agents\.reviewer\.{field}: allowed only with "transport": "acp"'
    ):
        _parse(raw)


@pytest.mark.parametrize(
    ("path", "value", "message"),
    [
        (["transport"], "grpc", r"\$\.agents\.builder\.transport: 'grpc' is not one of"),
        (["permissions", "edit"], "maybe", r"\$\.agents\.builder\.permissions\.edit"),
        (["permissions", "teleport"], "allow", "teleport"),
        (["pass_env"], ["NOT-A-NAME"], r"\$\.agents\.builder\.pass_env\[0\]"),
        (["prompts", "implement"], "do $gaol", r"prompts\.implement: unknown placeholder \$gaol"),
        (["prompts", "review"], "costs $5", r"prompts\.review: a '\$' that starts no placeholder"),
    ],
)
def test_bad_acp_fields_name_the_json_path(path: list[str], value: Any, message: str) -> None:
    raw = copy.deepcopy(BASE)
    doc = raw["agents"]["builder"]
    for p in path[:-1]:
        doc = doc[p]
    doc[path[-1]] = value
    with pytest.raises(ConfigError, match=message):
        _parse(raw)


def _command(action: str, inputs: dict[str, Any]) -> dict[str, Any]:
    return {"action": action, "task_id": "T-1", "inputs": inputs, "expected_outputs": []}


def test_default_prompts_carry_the_command_inputs(tmp_path: Path) -> None:
    task = {
        "id": "T-1",
        "goal": "greet politely",
        "spec_path": "SPEC.md",
        "expected_outputs": ["g.py"],
    }
    (tmp_path / "reviews").mkdir()
    (tmp_path / "reviews" / "T-1.json").write_text(
        '{"status": "changes_requested", "summary": "typo"}'
    )
    text = prompts.render(_command("implement", {"round": 1}), task, tmp_path)
    assert "for task T-1" in text and "greet politely" in text and "- g.py" in text
    text = prompts.render(
        _command(
            "implement_changes", {"round": 2, "reason": "review", "notes_path": "reviews/T-1.json"}
        ),
        task,
        tmp_path,
    )
    assert "Round 2" in text and '"summary": "typo"' in text
    text = prompts.render(_command("review", {"round": 3}), task, tmp_path)
    assert "reviews/T-1.json" in text and '"approved" | "changes_requested"' in text
    text = prompts.render(_command("update_spec", {"round": 1}), task, tmp_path)
    assert "spec_notes/T-1.json" in text and '"no_changes_needed"' in text


def test_a_role_s_prompt_overrides_the_default(tmp_path: Path) -> None:
    text = prompts.render(
        _command("implement", {"round": 1}),
        {"id": "T-1", "goal": "g"},
        tmp_path,
        {"implement": "Build $task_id: $goal ($$0 budget)"},
    )
    assert text == "Build T-1: g ($0 budget)"


def test_notes_outside_the_workspace_are_not_read(tmp_path: Path) -> None:
    text = prompts.render(
        _command("implement_changes", {"round": 2, "reason": "review", "notes_path": "../secret"}),
        {"id": "T-1"},
        tmp_path,
    )
    assert "cannot read ../secret" in text
