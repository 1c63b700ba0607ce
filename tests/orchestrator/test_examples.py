"""docs/examples/: every example configuration loads, passes `lorch config check
--strict`, and those played by mockagent run end to end, offline."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from lorch.agents.known_agents import known
from lorch.app import config
from lorch.app.cli import main

from .conftest import Runner, records, run_ids

EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"
# Every example the documentation promises (issue 25, point 5).
NAMES = (
    "mock.json",
    "claude-code.json",
    "codex.json",
    "gemini-cli.json",
    "mixed-team.json",
    "intake.json",
    "spec-8.2.json",
)
# The warnings `lorch config check` gives for an example, by path (none today):
# an example that needs one names it here and in docs/examples/README.md.
EXPECTED_WARNINGS: dict[str, set[str]] = {}


def test_every_example_is_there_and_listed() -> None:
    found = sorted(p.name for p in EXAMPLES.glob("*.json"))
    assert found == sorted(NAMES)
    listed = re.findall(r"\[([\w.-]+\.json)\]\(", (EXAMPLES / "README.md").read_text())
    assert sorted(listed) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_example_passes_a_strict_check(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(EXAMPLES / name, tmp_path / "lorch.json")
    rc = main(["config", "check", "-w", str(tmp_path), "--strict", "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert {p["path"] for p in doc["problems"]} == EXPECTED_WARNINGS.get(name, set())
    assert all(p["level"] == "warning" for p in doc["problems"])
    assert rc == (1 if EXPECTED_WARNINGS.get(name) else 0)
    config.load(tmp_path)  # what a run does


@pytest.mark.parametrize("name", NAMES)
def test_known_agents_get_the_variables_real_agents_md_gives(name: str) -> None:
    doc = json.loads((EXAMPLES / name).read_text())
    for role, spec in doc["agents"].items():
        agent = known(spec["cmd"])
        if agent is not None:
            assert spec["transport"] == "acp", role
            assert spec["pass_env"] == agent.pass_env, (name, role)


def test_the_spec_format_example_is_read_as_the_spec_says(tmp_path: Path) -> None:
    shutil.copy(EXAMPLES / "spec-8.2.json", tmp_path / "lorch.json")
    cfg = config.load(tmp_path)
    assert cfg.raw["version"] == "1.0"
    assert "orchestration" not in cfg.agents  # "enabled": false
    assert cfg.policy.backoff_initial_s == 0.1  # initial_ms 100
    assert cfg.task is not None and cfg.task["id"] == "T-0042"


def _workspace(tmp_path: Path, name: str) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copy(EXAMPLES / name, ws / "lorch.json")
    return ws


@pytest.mark.e2e
@pytest.mark.parametrize("name", ["mock.json", "spec-8.2.json"])
def test_mock_examples_run_end_to_end(name: str, tmp_path: Path, lorch: Runner) -> None:
    ws = _workspace(tmp_path, name)
    (ws / "README.md").write_text("a project\n")
    done = lorch("run", "--workspace", str(ws))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[lorch] DONE" in done.stdout
    events = [r.get("event") for r in records(ws)]
    assert "review.completed" in events and "system.run_completed" in events
    assert lorch("verify", "--workspace", str(ws)).returncode == 0


@pytest.mark.e2e
def test_intake_example_runs_end_to_end(tmp_path: Path, lorch: Runner) -> None:
    ws = _workspace(tmp_path, "intake.json")
    (ws / "PLAN.md").write_text("# Plan\n\n- add a greeting module\n")
    done = lorch("run", "--workspace", str(ws), "--instruction", "Add a greeting module", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[lorch] DONE" in done.stdout
    [run] = run_ids(ws)
    events = [r.get("event") for r in records(ws, run)]
    assert "orchestration.proposed_tasks" in events and "system.run_completed" in events


@pytest.mark.e2e
@pytest.mark.slow
def test_claude_code_example_passes_doctor_with_the_real_adapter_offline(
    tmp_path: Path, lorch: Runner
) -> None:
    """The example as it is, with the pinned Claude Code adapter on PATH and a
    scripted endpoint on 127.0.0.1 as its model: `config check --verbose` finds the
    command and the key its pass_env names; doctor starts each role and opens a
    session, as a run does before its first command, and no model is called."""
    import os

    from lorch.testing.model_endpoint import ModelEndpoint
    from lorch.testing.model_script import Script
    from tests.realagents import adapters

    missing = adapters.without_node(os.environ)
    if missing is not None:
        action, why = missing
        pytest.fail(why) if action == "fail" else pytest.skip(why)
    bin_dir = adapters.claude_agent_acp(adapters.ensure_installed()).parent
    ws = _workspace(tmp_path, "claude-code.json")
    (ws / "SPEC.md").write_text("# Greeting\n")
    log = tmp_path / "requests.ndjson"
    endpoint = ModelEndpoint(Script.from_dict({"steps": []}), log=log).start()
    try:
        home = tmp_path / "home"
        home.mkdir()
        env = adapters.offline_env(endpoint.url, home)
        env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
        check = lorch("config", "check", "-w", str(ws), "--verbose", "--strict", env=env)
        assert check.returncode == 0, check.stdout + check.stderr
        assert "ok       key builder: ANTHROPIC_API_KEY set" in check.stdout
        doctor = lorch("doctor", "-w", str(ws), env=env, timeout=300)
    finally:
        endpoint.close()
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    for role in ("builder", "reviewer", "spec_maintainer"):
        assert f"ok   acp {role}: @zed-industries/claude-agent-acp" in doctor.stdout
    requests = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    assert not [r for r in requests if r.get("model")]  # no model call: nothing was prompted
