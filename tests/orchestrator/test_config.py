"""lorch.json: both formats, every mistake at once, values lorch cannot honour refused."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from lorch.app import config
from lorch.wire.errors import ConfigError
from lorch.wire.resources import scenarios_dir

from .conftest import records

# A configuration in the form of MASTER-SPEC §8.2, every field of it present.
SPEC_FORM: dict[str, Any] = {
    "version": "1.0",
    "workspace_root": ".",
    "policy": {
        "concurrency": 1,
        "message_max_bytes": 262144,
        "artifact_max_bytes": 1048576,
        "retry": {
            "max_attempts": 4,
            "backoff": {"initial_ms": 50, "max_ms": 2000, "multiplier": 3.0, "jitter": "full"},
        },
        "strict_version_pinning": True,
        "parallel_reviews": False,
        "redact_secrets_in_logs": True,
    },
    "agents": {
        "builder": {
            "cmd": ["mockagent", "-type", "builder"],
            "heartbeat_interval_s": 5,
            "timeouts_s": {"implement": 60, "implement_changes": 60},
            "env": {"AGENT_ROLE": "builder"},
        },
        "reviewer": {"cmd": ["mockagent", "-type", "reviewer"], "timeouts_s": {"review": 30}},
        "spec_maintainer": {"cmd": ["mockagent", "-type", "spec_maintainer"]},
        "orchestration": {
            "enabled": True,
            "cmd": ["mockagent", "-type", "orchestration"],
            "timeouts_s": {"intake": 20, "task_discovery": 20},
        },
    },
    "tasks": [
        {"id": "T-0100", "goal": "First task"},
        {"id": "T-0101", "goal": "Second task"},
    ],
}


def parse(raw: Any, tmp_path: Path) -> config.Config:
    return config.parse(raw, tmp_path / "lorch.json")


def refused(raw: Any, tmp_path: Path) -> str:
    with pytest.raises(ConfigError) as e:
        parse(raw, tmp_path)
    return str(e.value)


def test_the_spec_form_is_accepted_and_honoured(tmp_path: Path) -> None:
    c = parse(copy.deepcopy(SPEC_FORM), tmp_path)
    p = c.policy
    assert p.max_attempts == 4
    assert (p.backoff_initial_s, p.backoff_max_s, p.backoff_factor) == (0.05, 2.0, 3.0)
    assert p.backoff_jitter == "full"
    assert (p.message_max_bytes, p.artifact_max_bytes) == (262144, 1048576)
    assert [t["id"] for t in c.tasks] == ["T-0100", "T-0101"]
    assert c.task == {"id": "T-0100", "goal": "First task"}
    assert c.find_task("T-0101") == {"id": "T-0101", "goal": "Second task"}
    assert c.find_task("T-9") is None
    assert c.orchestration_enabled
    assert c.agents["builder"].heartbeat_interval_s == 5
    assert c.agents["reviewer"].timeouts_s["review"] == 30
    assert c.agents["orchestration"].timeouts_s["intake"] == 20


def test_the_original_golden_config_is_accepted(tmp_path: Path) -> None:
    # The original's defaults: an empty tasks list and a placeholder agent command.
    raw = copy.deepcopy(SPEC_FORM)
    raw["tasks"] = []
    raw["policy"]["message_max_bytes"] = 262144
    raw["policy"]["artifact_max_bytes"] = 1073741824
    c = parse(raw, tmp_path)
    assert c.task is None and c.tasks == ()


def test_a_disabled_orchestration_role_is_left_out(tmp_path: Path) -> None:
    raw = copy.deepcopy(SPEC_FORM)
    raw["agents"]["orchestration"]["enabled"] = False
    c = parse(raw, tmp_path)
    assert "orchestration" not in c.agents
    assert not c.orchestration_enabled
    raw["agents"]["builder"]["enabled"] = False
    msg = refused(raw, tmp_path)
    assert "$.agents.builder.enabled" in msg and "not supported" in msg


def test_today_s_format_keeps_working(tmp_path: Path) -> None:
    for path in scenarios_dir().glob("*/lorch.json"):
        c = config.parse(json.loads(path.read_text()), path)
        if c.task is None:  # a scenario that starts with intake
            assert c.tasks == () and c.orchestration_enabled, path
            continue
        assert c.tasks == (c.task,)
    raw = json.loads((scenarios_dir() / "happy-path" / "lorch.json").read_text())
    raw["policy"] = {"backoff": {"initial_s": 0.5, "factor": 3, "max_s": 7}, "max_attempts": 2}
    p = parse(raw, tmp_path).policy
    assert (p.backoff_initial_s, p.backoff_factor, p.backoff_max_s, p.max_attempts) == (
        0.5,
        3.0,
        7.0,
        2,
    )


def test_task_and_tasks_together(tmp_path: Path) -> None:
    raw = copy.deepcopy(SPEC_FORM)
    raw["task"] = {"id": "T-0001", "goal": "default"}
    c = parse(raw, tmp_path)
    assert [t["id"] for t in c.tasks] == ["T-0001", "T-0100", "T-0101"]
    assert c.task is not None and c.task["id"] == "T-0001"
    raw["tasks"].append({"id": "T-0001"})
    msg = refused(raw, tmp_path)
    assert "$.tasks[2].id" in msg and "listed twice" in msg


def test_every_mistake_is_reported_at_once(tmp_path: Path) -> None:
    raw = copy.deepcopy(SPEC_FORM)
    raw["version"] = "2"
    raw["policy"]["retry"]["max_attempts"] = 0
    raw["policy"]["retry"]["backoff"]["initial_ms"] = "1s"
    raw["policy"]["concurrency"] = 2
    raw["agents"]["reviewer"]["cmd"] = []
    msg = refused(raw, tmp_path)
    lines = msg.splitlines()
    assert lines[0] == f"{tmp_path / 'lorch.json'}: 5 problems:"
    wheres = [line.split(":")[0].strip() for line in lines[1:]]
    assert wheres == sorted(wheres)
    assert set(wheres) == {
        "$.version",
        "$.policy.retry.max_attempts",
        "$.policy.retry.backoff.initial_ms",
        "$.policy.concurrency",
        "$.agents.reviewer.cmd",
    }


def test_one_mistake_is_one_line(tmp_path: Path) -> None:
    raw = copy.deepcopy(SPEC_FORM)
    raw["agents"]["builder"]["cmd"] = []
    msg = refused(raw, tmp_path)
    assert "\n" not in msg and "$.agents.builder.cmd" in msg


@pytest.mark.parametrize(
    ("where", "value", "says"),
    [
        ("concurrency", 2, "one agent at a time"),
        ("parallel_reviews", True, "one at a time"),
        ("strict_version_pinning", False, "pinned to the run's snapshot"),
        ("redact_secrets_in_logs", False, "always redacted"),
        ("message_max_bytes", 262145, "limited to the protocol's 262144 bytes"),
        ("message_max_bytes", 16383, "below 16384 bytes lorch's own commands may not fit"),
    ],
)
def test_values_lorch_cannot_honour_are_refused(
    where: str, value: Any, says: str, tmp_path: Path
) -> None:
    raw = copy.deepcopy(SPEC_FORM)
    raw["policy"][where] = value
    msg = refused(raw, tmp_path)
    assert "\n" not in msg
    assert f"$.policy.{where}: {json.dumps(value)} is not supported: " in msg and says in msg


def test_other_jitters_and_workspace_roots_are_refused(tmp_path: Path) -> None:
    raw = copy.deepcopy(SPEC_FORM)
    raw["policy"]["retry"]["backoff"]["jitter"] = "equal"
    assert "$.policy.retry.backoff.jitter: 'equal' is not supported" in refused(raw, tmp_path)
    raw = copy.deepcopy(SPEC_FORM)
    raw["workspace_root"] = "src"
    assert "$.workspace_root: 'src' is not supported" in refused(raw, tmp_path)
    raw["workspace_root"] = str(tmp_path)
    parse(raw, tmp_path)  # the same folder, spelt absolute


def test_both_spellings_of_one_setting_are_refused(tmp_path: Path) -> None:
    raw = copy.deepcopy(SPEC_FORM)
    raw["policy"]["max_attempts"] = 2
    raw["policy"]["backoff"] = {"initial_s": 1}
    msg = refused(raw, tmp_path)
    assert "$.policy.retry.max_attempts: given twice" in msg
    assert "$.policy.retry.backoff: given twice" in msg


def test_a_typo_gets_a_suggestion(tmp_path: Path) -> None:
    raw = copy.deepcopy(SPEC_FORM)
    raw["policy"]["retry"]["max_atempts"] = 3
    assert "did you mean 'max_attempts'?" in refused(raw, tmp_path)
    raw = copy.deepcopy(SPEC_FORM)
    raw["taks"] = []
    assert "did you mean 'tasks'?" in refused(raw, tmp_path)
    raw = copy.deepcopy(SPEC_FORM)
    raw["agents"]["reviewer"]["timeout_s"] = {}
    assert "did you mean 'timeouts_s'?" in refused(raw, tmp_path)


@pytest.mark.e2e
def test_a_run_on_the_spec_form_with_the_original_flags(scenario, lorch) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    raw = copy.deepcopy(SPEC_FORM)
    for role in ("builder", "reviewer", "spec_maintainer"):
        raw["agents"][role]["cmd"] = [
            "mockagent",
            "-type",
            role,
            "-script",
            f"fixtures/{role}.json",
        ]
    raw["agents"]["orchestration"]["enabled"] = False
    raw["tasks"] = [{"id": "T-0042", "goal": "Add a greeting module"}]
    (ws / "lorch.json").write_text(json.dumps(raw))
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[lorch] DONE" in r.stdout
    assert (ws / "src" / "greeting.py").is_file()
    started = {
        rec["payload"]["role"] for rec in records(ws) if rec.get("event") == "system.agent_started"
    }
    assert started == {"builder", "reviewer", "spec_maintainer"}
