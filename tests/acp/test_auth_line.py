"""The authentication-failure line for the agents docs/real-agents.md names.

The scripted ACP agent plays each one (a wrapper under the agent's program
name, refusing a session with the agent's own words): the line names the role,
the program, quotes the reason (redacted, control characters visible) and says
which variables to set, or which one lorch has but does not pass.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from lorch.agents.acp.host import AcpSettings
from lorch.agents.acp.port import AcpPort, describe_session
from lorch.agents.transport import Inbox, Launch
from lorch.wire.errors import AgentError
from lorch.wire.redact import Redactor

from .conftest import AGENT

SECRET = "sk-live-0123456789abcdef"


def _port(tmp_path: Path, exe: str, reason: str, pass_env: tuple[str, ...] = ()) -> AcpPort:
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"turns": [], "auth": {"required": True, "message": reason}}))
    wrapper = tmp_path / "bin" / exe
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\nexec {sys.executable} {AGENT} {script} "$@"\n')
    wrapper.chmod(0o755)
    (tmp_path / "ws").mkdir()
    launch = Launch(
        role="reviewer",
        argv=[str(wrapper)],
        cwd=tmp_path / "ws",
        env={"PATH": os.environ.get("PATH", ""), **{k: os.environ[k] for k in pass_env}},
        log_path=tmp_path / "log.ndjson",
        generation=1,
        redactor=Redactor([SECRET]),
    )
    port = AcpPort(launch, Inbox(), AcpSettings(workspace=tmp_path / "ws"))
    port.start()
    return port


def _line(port: AcpPort) -> str:
    try:
        with pytest.raises(AgentError) as e:
            describe_session(port)
    finally:
        port.kill()
    return str(e.value)


def test_claude_code_without_a_key_names_its_variables_and_its_login(tmp_path: Path) -> None:
    port = _port(tmp_path, "claude-agent-acp", "Authentication required")
    line = _line(port)
    assert (
        f"agent reviewer ({tmp_path}/bin/claude-agent-acp) needs authentication for a session: "
        'it said "Authentication required"; set ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN and '
        "list it in $.agents.reviewer.pass_env, or log in once (`claude /login`, kept in "
        "~/.claude)"
    ) in line


def test_codex_with_the_key_in_lorchs_environment_but_not_passed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.delenv("CODEX_API_KEY", raising=False)
    port = _port(tmp_path, "codex-acp", "Not logged in: run codex login or set OPENAI_API_KEY")
    line = _line(port)
    assert 'it said "Not logged in: run codex login or set OPENAI_API_KEY"' in line
    assert (
        "OPENAI_API_KEY is set in lorch's environment but not passed to the agent: "
        "add it to $.agents.reviewer.pass_env"
    ) in line


def test_codex_with_the_key_passed_is_told_the_key_needs_a_model_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The real codex-acp 0.16 with OPENAI_API_KEY passed and the built-in
    # provider refuses the session all the same (tests/realagents/test_codex_lorch.py).
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    port = _port(tmp_path, "codex-acp", "Authentication required", ("OPENAI_API_KEY",))
    line = _line(port)
    assert (
        "OPENAI_API_KEY is passed, but Codex does not use it alone: name it as env_key of a "
        "model provider (`-c` in its cmd, or its config.toml; codex-acp reads no key from the "
        "environment for its built-in openai provider), or log in once (`codex login`, kept "
        "in ~/.codex)"
    ) in line
    assert SECRET not in line


def test_codex_without_a_key_is_told_the_key_needs_a_model_provider(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in ("OPENAI_API_KEY", "CODEX_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    line = _line(_port(tmp_path, "codex-acp", "Authentication required"))
    assert (
        "set OPENAI_API_KEY or CODEX_API_KEY and list it in $.agents.reviewer.pass_env and name "
        "it as env_key of a model provider"
    ) in line


def test_gemini_s_reason_is_quoted_redacted_and_escaped(tmp_path: Path) -> None:
    reason = f"Gemini API key is missing or not configured.\x1b[2J\r[lorch] DONE {SECRET}"
    port = _port(tmp_path, "gemini", reason)
    line = _line(port)
    assert "\x1b" not in line and "\r" not in line and SECRET not in line
    assert (
        'it said "Gemini API key is missing or not configured.\\x1b[2J\\x0d[lorch] DONE ***"'
    ) in line
    assert "set GEMINI_API_KEY or GOOGLE_API_KEY and list it in $.agents.reviewer.pass_env" in line
