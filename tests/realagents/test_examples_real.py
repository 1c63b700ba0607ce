"""The real-agent examples in docs/examples/ run offline as they are written.

Each test takes one example (``claude-code.json``, ``gemini-cli.json``,
``codex.json``, ``mixed-team.json``) unchanged — its ``cmd``, transport,
``pass_env`` and ``env`` — and changes only what a user changes to point the
agents at another endpoint: the environment lorch is started with (the base-URL
variable, a dummy key, the proxy variables, the pinned adapters' bin directory on
``PATH``) and, for Codex, the provider's ``base_url`` inside ``cmd`` (the one
place docs/real-agents.md says Codex takes its URL from). Every role talks to one
scripted endpoint: the builder writes ``greeting.py`` and its test, the reviewer
writes an approving verdict, the spec maintainer writes "no changes needed".
The run completes, ``greeting.py`` is there once, and each role's model requests
reached the endpoint in the scripted order.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.realagents import adapters

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"
TASK = "T-0001"
ROLES = ("builder", "reviewer", "spec_maintainer")
# lorch's default prompt opens with this: each role's requests are found by it.
OPENING = {
    "builder": f"You are the builder for task {TASK}.",
    "reviewer": f"You are the reviewer for task {TASK}.",
    "spec_maintainer": f"You are the spec maintainer for task {TASK}.",
}
COMMAND_PATTERN = rf"You are the [a-z ]+ for task {TASK}\."
# The example's Codex provider URL: a user going elsewhere changes it in cmd.
OPENAI_URL = "https://api.openai.com/v1"
# Gemini CLI's model router (model "auto") asks this before each turn.
ROUTER = "Task Routing AI"

GREETING = "def greet(name):\n    return 'Hello, ' + name + '!'\n"
GREETING_TEST = (
    "from greeting import greet\n\n\ndef test_greet():\n    assert greet('Ada') == 'Hello, Ada!'\n"
)
REVIEW = {"status": "approved", "summary": "greeting.py greets, and its test passes."}
SPEC = {"status": "no_changes_needed", "summary": "The spec holds."}
# What each role writes, in order (one file a model turn).
WRITES: dict[str, list[tuple[str, str]]] = {
    "builder": [("greeting.py", GREETING), ("test_greeting.py", GREETING_TEST)],
    "reviewer": [(f"reviews/{TASK}.json", json.dumps(REVIEW) + "\n")],
    "spec_maintainer": [(f"spec_notes/{TASK}.json", json.dumps(SPEC) + "\n")],
}


def _tool(name: str, **tool_input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": tool_input}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _escape(text: str) -> str:
    """A reply string is a template: literal braces are doubled."""
    return text.replace("{", "{{").replace("}", "}}")


def _claude_write(path: str, content: str) -> dict[str, Any]:
    return _tool("Write", file_path="{cwd}/" + path, content=_escape(content))


def _gemini_write(path: str, content: str) -> dict[str, Any]:
    return _tool("write_file", file_path="{cwd}/" + path, content=_escape(content))


def _codex_write(path: str, content: str) -> dict[str, Any]:
    added = "".join(f"+{line}\n" for line in content.splitlines())
    patch = f"*** Begin Patch\n*** Add File: {path}\n{added}*** End Patch\n"
    return _tool("apply_patch", input=_escape(patch))


# The agent each example's cmd starts, by its first word.
WRITERS: dict[str, Callable[[str, str], dict[str, Any]]] = {
    "claude-agent-acp": _claude_write,
    "gemini": _gemini_write,
    "codex-acp": _codex_write,
}


def _model_script(agents: dict[str, str]) -> dict[str, Any]:
    """Each role writes its files, one a turn, then ends its turn."""
    route = json.dumps({"complexity_reasoning": "simple", "complexity_score": 10})
    steps: list[dict[str, Any]] = [
        {"name": "route", "when": {"system_contains": ROUTER}, "reply": [_text(route)]}
    ]
    for role in ROLES:
        write = WRITERS[agents[role]]
        for turn, (path, content) in enumerate(WRITES[role]):
            when: dict[str, Any] = {"prompt_contains": OPENING[role], "turn": turn}
            if turn:
                when["tool_error"] = False
            steps.append({"name": f"{role}-{turn}", "when": when, "reply": [write(path, content)]})
        done = len(WRITES[role])
        steps.append(
            {
                "name": f"{role}-done",
                "when": {"prompt_contains": OPENING[role], "turn": done, "tool_error": False},
                "reply": [_text("Done.")],
            }
        )
    steps.append({"name": "failed", "when": {"tool_error": True}, "reply": [_text("Failed.")]})
    return {"command_pattern": COMMAND_PATTERN, "steps": steps}


def _expected_steps(role: str) -> list[str]:
    return [f"{role}-{turn}" for turn in range(len(WRITES[role]))] + [f"{role}-done"]


def _agents(name: str) -> dict[str, str]:
    """Which agent plays each role in the example: its command's first word."""
    config = json.loads((EXAMPLES / name).read_text())
    return {role: config["agents"][role]["cmd"][0] for role in ROLES}


def _workspace(tmp_path: Path, name: str, url: str) -> Path:
    """The example in a fresh workspace, its Codex provider pointed at ``url``."""
    config = json.loads((EXAMPLES / name).read_text())
    for role in ROLES:
        cmd = config["agents"][role]["cmd"]
        # Codex takes its URL from the provider named in cmd, not from the environment.
        config["agents"][role]["cmd"] = [arg.replace(OPENAI_URL, f"{url}/v1") for arg in cmd]
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "SPEC.md").write_text("# Greeting\n\ngreeting.greet(name) says hello to name.\n")
    (ws / "lorch.json").write_text(json.dumps(config, indent=2) + "\n")
    return ws


def _env(clean_env: dict[str, str], url: str) -> dict[str, str]:
    """lorch's environment: the agents' keys (dummies) and base URLs, the proxy."""
    bin_dir = adapters.claude_agent_acp(adapters.ensure_installed()).parent
    env = dict(clean_env)
    for var in list(env):
        if var.startswith(("ANTHROPIC_", "OPENAI_", "CODEX_", "GEMINI_", "GOOGLE_")):
            del env[var]
    env.update(
        {
            "PATH": f"{bin_dir}{os.pathsep}{clean_env['PATH']}",
            "ANTHROPIC_BASE_URL": url,
            "ANTHROPIC_API_KEY": "sk-ant-offline-test",
            "GOOGLE_GEMINI_BASE_URL": url,
            "GEMINI_API_KEY": "offline-test-key",
            "OPENAI_API_KEY": "sk-offline-test",
            # Anything that is not a model call shows up in the endpoint's log, refused.
            "HTTPS_PROXY": url,
            "HTTP_PROXY": url,
            "NO_PROXY": "127.0.0.1,localhost",
        }
    )
    return env


@pytest.mark.parametrize(
    "name", ["claude-code.json", "gemini-cli.json", "codex.json", "mixed-team.json"]
)
def test_real_agent_example_runs_offline_as_written(
    name: str,
    endpoint_for: Any,
    lorch_bin: str,
    clean_env: dict[str, str],
    tmp_path: Path,
) -> None:
    ep = endpoint_for(_model_script(_agents(name)), name)
    ws = _workspace(tmp_path, name, ep.url)
    done = subprocess.run(
        [lorch_bin, "run", "--workspace", str(ws)],
        env=_env(clean_env, ep.url),
        capture_output=True,
        text=True,
        timeout=800,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:] + done.stdout[-2000:]

    # The builder's work, once; the verdicts where lorch reads them.
    assert (ws / "greeting.py").read_text() == GREETING
    assert (ws / "test_greeting.py").read_text() == GREETING_TEST
    found = [p for p in ws.rglob("greeting.py") if not any(s.startswith(".") for s in p.parts)]
    assert found == [ws / "greeting.py"]
    assert json.loads((ws / "reviews" / f"{TASK}.json").read_text()) == REVIEW
    assert json.loads((ws / "spec_notes" / f"{TASK}.json").read_text()) == SPEC

    # Each role's model calls reached the endpoint, each scripted step once.
    steps = [r.step for r in ep.requests if r.step not in (None, "route")]
    for role in ROLES:
        assert [s for s in steps if s.startswith(role)] == _expected_steps(role), ep.requests
    assert "failed" not in steps
    # Every model call was answered (a request that is not one, such as an update
    # check through the proxy, is refused and the agent carries on).
    assert not [r for r in ep.requests if r.model and r.status != 200], ep.requests
