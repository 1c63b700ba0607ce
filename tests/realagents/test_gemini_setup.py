"""A new user's first steps with the real Gemini CLI, offline.

``gemini`` is on PATH and ``GEMINI_API_KEY`` is exported, as docs/real-agents.md
says. The first ``lorch run`` in a project writes a lorch.json whose roles start
``gemini --acp`` and pass the key, so ``lorch doctor`` then opens a session with
every role. A role whose ``pass_env`` lacks the key fails with one line naming
the variable and quoting Gemini's own reason.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.realagents import adapters

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]


def _user(tmp_path: Path, gemini: list[str], url: str, clean_env: dict[str, str]) -> dict[str, str]:
    """lorch's environment: gemini on PATH, the key and the endpoint exported."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "gemini").symlink_to(gemini[0])
    agent_env = adapters.gemini_offline_env(url, tmp_path / "home")
    env = {k: v for k, v in clean_env.items() if not k.startswith(("GEMINI_", "GOOGLE_"))}
    env.update({k: v for k, v in agent_env.items() if k != "PATH"})
    env["PATH"] = f"{bin_dir}{os.pathsep}{clean_env['PATH']}"
    return env


def _lorch(lorch_bin: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [lorch_bin, *args], env=env, capture_output=True, text=True, timeout=240, check=False
    )


def _script() -> dict[str, Any]:
    return {"steps": [], "fallback": [{"type": "text", "text": "ok"}]}


def test_the_first_run_config_starts_gemini_with_its_key(
    gemini_cli: list[str],
    endpoint_for: Any,
    lorch_bin: str,
    clean_env: dict[str, str],
    tmp_path: Path,
) -> None:
    ep = endpoint_for(_script())
    env = _user(tmp_path, gemini_cli, ep.url, clean_env)
    ws = tmp_path / "project"
    ws.mkdir()
    (ws / "README.md").write_text("# a project\n")

    first = _lorch(lorch_bin, env, "run", "--workspace", str(ws))
    assert first.returncode == 2, first.stderr + first.stdout
    assert "Gemini CLI (`gemini --acp`, found on PATH)" in first.stderr
    config = json.loads((ws / "lorch.json").read_text())
    for role in ("builder", "reviewer", "spec_maintainer"):
        assert config["agents"][role]["cmd"] == ["gemini", "--acp"]
        assert "GEMINI_API_KEY" in config["agents"][role]["pass_env"]

    doctor = _lorch(lorch_bin, env, "doctor", "--workspace", str(ws))
    assert doctor.returncode == 0, doctor.stderr + doctor.stdout
    for role in ("builder", "reviewer", "spec_maintainer"):
        assert f"ok   acp {role}: gemini-cli" in doctor.stdout, doctor.stdout
    # The proxy variables are passed too: what Gemini sends elsewhere (its usage
    # statistics, on by default) reaches the endpoint as its proxy and is refused.
    stray = {r.path for r in ep.requests if r.status == 403}
    assert stray <= {"play.googleapis.com:443"}, ep.requests

    # The key not passed (nor the gateway's URL, which Gemini would use without a
    # key): one line naming the key, with Gemini's own reason.
    config["agents"]["reviewer"]["pass_env"].remove("GEMINI_API_KEY")
    config["agents"]["reviewer"]["pass_env"].remove("GOOGLE_GEMINI_BASE_URL")
    (ws / "lorch.json").write_text(json.dumps(config))
    doctor = _lorch(lorch_bin, env, "doctor", "--workspace", str(ws))
    assert doctor.returncode == 1, doctor.stderr + doctor.stdout
    (line,) = [ln for ln in doctor.stdout.splitlines() if ln.startswith("FAIL acp reviewer")]
    assert "needs authentication for a session" in line
    assert 'it said "Gemini API key is missing or not configured."' in line
    assert (
        "GEMINI_API_KEY is set in lorch's environment but not passed to the agent: "
        "add it to $.agents.reviewer.pass_env"
    ) in line
    assert "offline-test-key" not in doctor.stdout + doctor.stderr


def test_an_unreachable_model_is_one_line_at_the_turn_timeout(
    gemini_cli: list[str], lorch_bin: str, clean_env: dict[str, str], tmp_path: Path
) -> None:
    # A port nobody listens on: Gemini CLI retries the model call without a word.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "SPEC.md").write_text("# hello\n")
    env = adapters.gemini_offline_env(url, tmp_path / "home")
    del env["PATH"]
    config = {
        "version": "1",
        "task": {"id": "T-1", "goal": "Write hello.py.", "spec_path": "SPEC.md"},
        "agents": {
            "builder": {
                "transport": "acp",
                "cmd": gemini_cli,
                "env": env,
                "timeouts_s": {"implement": 3},
            },
            "reviewer": {"cmd": ["mockagent", "--type", "reviewer"]},
            "spec_maintainer": {"cmd": ["mockagent", "--type", "spec_maintainer"]},
        },
        "policy": {"max_attempts": 1},
    }
    (ws / "lorch.json").write_text(json.dumps(config))
    run = _lorch(lorch_bin, clean_env, "run", "--workspace", str(ws))
    assert run.returncode == 1, run.stderr + run.stdout
    (line,) = run.stderr.strip().splitlines()
    assert line.startswith("lorch: run failed: agent builder failed implement for task T-1")
    assert "implement timed out after 3 s; builder said nothing" in line
    assert "check GOOGLE_GEMINI_BASE_URL and HTTPS_PROXY in $.agents.builder.pass_env" in line
