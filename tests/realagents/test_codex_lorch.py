"""lorch drives the real Codex as its builder and reviewer, offline, inside lorch's sandbox.

Both are the pinned ``codex-acp`` adapter (Codex's own agent, a native binary)
talking to the scripted endpoint's OpenAI Responses API through the model
provider the first run names (``-c`` options, its ``base_url`` pointed at the
endpoint); the spec maintainer is mockagent. Every role runs under the default
sandbox (bubblewrap where it can run). The builder creates ``hello.py`` with
Codex's own ``apply_patch`` tool, runs it with its shell tool
(``exec_command``), then tries with the shell what a hostile agent would:
append to lorch's ledger and ``lorch.json``, plant a file in ``state/``. The
reviewer writes its verdict with ``apply_patch``. The run completes; the work is
there exactly once and none of lorch's files changed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lorch.agents import sandbox
from tests.realagents import adapters

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

BWRAP = sandbox.probe()
needs_bwrap = pytest.mark.skipif(BWRAP.bwrap is None, reason=f"no sandbox here: {BWRAP.why}")

TASK = "T-0042"
TAG = "[lorch $action $task_id round $round]"
COMMAND_PATTERN = r"\[lorch [a-z_]+ T-0042 round \d+\]"
IMPLEMENT = f"[lorch implement {TASK} round 1]"
REVIEW = f"[lorch review {TASK} round 1]"
HELLO = "print('hello')\n"
VERDICT = {"status": "approved", "summary": "hello.py prints the greeting."}
VERDICT_PATCH = (
    f"*** Begin Patch\n*** Add File: reviews/{TASK}.json\n+{json.dumps(VERDICT)}\n*** End Patch\n"
)
PATCH = "*** Begin Patch\n*** Add File: hello.py\n+print('hello')\n*** End Patch\n"
# One shell command: each attack says whether it worked, then the work is run
# (braces doubled: reply strings are templates).
ATTACK = (
    "for f in lorch.json events/*.ndjson state/planted; do"
    ' if {{ echo forged >> "$f"; }} 2>/dev/null; then echo "wrote $f";'
    ' else echo "refused $f"; fi; done; python3 hello.py > ran.txt'
)
NO_HELPER = "bwrap: execvp codex-linux-sandbox: No such file or directory"
REFUSED = "refused lorch.json\nrefused events/*.ndjson\nrefused state/planted\n"


def _tool(name: str, **tool_input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": tool_input}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _after(turn: int, prompt: str = IMPLEMENT) -> dict[str, Any]:
    return {"prompt_contains": prompt, "turn": turn, "has_tools": True}


def _model_script() -> dict[str, Any]:
    steps = [
        {
            "name": "patch",
            "when": _after(0),
            "reply": [_text("Creating hello.py."), _tool("apply_patch", input=PATCH)],
        },
        {
            "name": "attack",
            "when": _after(1) | {"after_tool": "apply_patch", "tool_error": False},
            "reply": [_tool("exec_command", cmd=ATTACK)],
        },
        {
            "name": "done",
            "when": _after(2)
            | {"after_tool": "exec_command", "tool_error": False, "contains": REFUSED},
            "reply": [_text("hello.py written and run.")],
        },
        {
            "name": "review",
            "when": _after(0, REVIEW),
            "reply": [_tool("apply_patch", input=VERDICT_PATCH)],
        },
        {
            "name": "review-done",
            "when": _after(1, REVIEW) | {"after_tool": "apply_patch", "tool_error": False},
            "reply": [_text("Approved.")],
        },
        {
            "name": "no-sandbox-helper",
            "when": {"tool_error": True, "contains": NO_HELPER},
            "reply": [_text("Codex's sandbox could not start.")],
        },
        {"name": "failed", "when": {"tool_error": True}, "reply": [_text("A tool failed.")]},
    ]
    return {"command_pattern": COMMAND_PATTERN, "steps": steps}


def _codex_role(
    codex: list[str], url: str, home: Path | None, sandbox_mode: str, prompts: dict[str, str]
) -> dict[str, Any]:
    env = adapters.codex_offline_env(url)
    del env["PATH"]  # lorch passes its own PATH
    if home is not None:
        home.mkdir(parents=True, exist_ok=True)
        env["HOME"] = str(home)
    return {
        "transport": "acp",
        "cmd": [*codex, *adapters.codex_args(url, sandbox_mode=sandbox_mode)],
        "env": env,
        "prompts": prompts,
    }


def _workspace(
    root: Path, codex: list[str], url: str, home: Path | None, *, sandbox_mode: str
) -> Path:
    """Codex as builder and reviewer (each with ``home``/ROLE as HOME, if given)."""
    ws = root / "ws"
    (ws / "specs").mkdir(parents=True)
    (ws / "specs" / "SPEC.md").write_text("# hello\n\nhello.py prints a greeting.\n")
    spec = {"events": [{"type": "spec.no_changes_needed", "payload": {"summary": "spec holds"}}]}
    (ws / "fixtures").mkdir()
    (ws / "fixtures" / "spec.json").write_text(json.dumps({"responses": {"update_spec": spec}}))
    config = {
        "version": "1",
        "task": {
            "id": TASK,
            "goal": "Write hello.py, which prints a greeting.",
            "spec_path": "specs/SPEC.md",
            "expected_outputs": ["hello.py"],
        },
        "agents": {
            "builder": _codex_role(
                codex,
                url,
                home and home / "builder",
                sandbox_mode,
                {"implement": TAG + " You are the builder. $goal Work in $workspace."},
            ),
            "reviewer": _codex_role(
                codex,
                url,
                home and home / "reviewer",
                sandbox_mode,
                {"review": TAG + " You are the reviewer. Write your verdict in $workspace."},
            ),
            "spec_maintainer": {
                "cmd": ["mockagent", "--script", "fixtures/spec.json", "--type", "spec_maintainer"]
            },
        },
        "policy": {"max_attempts": 1, "backoff": {"initial_s": 0.05, "factor": 2, "max_s": 1}},
    }
    (ws / "lorch.json").write_text(json.dumps(config, indent=2))
    return ws


def _run(lorch_bin: str, env: dict[str, str], ws: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [lorch_bin, "run", "--workspace", str(ws)],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )


@pytest.fixture
def home_outside_tmp() -> Iterator[Path]:
    """A HOME for Codex that is not under /tmp (removed at the end of the test).

    Codex starts its own sandbox through a helper it links into
    ``$CODEX_HOME/tmp`` at start, and refuses to link it under the temporary
    directory (``TMPDIR``, which is ``/tmp`` inside lorch's sandbox): with a
    HOME there every command it runs fails with ``bwrap: execvp
    codex-linux-sandbox: No such file or directory``.
    """
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lorch"
    base.mkdir(parents=True, exist_ok=True)
    home = Path(tempfile.mkdtemp(prefix="codex-home-", dir=base))
    yield home
    shutil.rmtree(home, ignore_errors=True)


@needs_bwrap
@pytest.mark.parametrize(
    "sandbox_mode",
    [
        # Codex's own sandbox (bubblewrap, nested in lorch's) around its commands.
        "workspace-write",
        # No sandbox of its own: lorch's is the only one.
        "danger-full-access",
    ],
)
def test_codex_builds_under_lorchs_sandbox_and_cannot_reach_lorchs_files(
    codex_acp: list[str],
    endpoint_for: Any,
    lorch_bin: str,
    clean_env: dict[str, str],
    tmp_path: Path,
    home_outside_tmp: Path,
    sandbox_mode: str,
) -> None:
    ep = endpoint_for(_model_script(), "codex")
    # Without a HOME of its own, lorch's private one (in the workspace, here under /tmp).
    home = home_outside_tmp if sandbox_mode == "workspace-write" else None
    ws = _workspace(tmp_path, codex_acp, ep.url, home, sandbox_mode=sandbox_mode)
    config_before = (ws / "lorch.json").read_bytes()
    done = _run(lorch_bin, clean_env, ws)
    assert done.returncode == 0, done.stderr + done.stdout

    # The work, once: Codex's apply_patch created hello.py, its shell ran it.
    assert (ws / "hello.py").read_text() == HELLO
    assert (ws / "ran.txt").read_text() == "hello\n"
    (ledger,) = (ws / "events").glob("*.ndjson")
    # Every line of the ledger is lorch's: an appended "forged" would not parse.
    records = [json.loads(line) for line in ledger.read_text().splitlines()]
    events = [r.get("event") for r in records]
    assert "review.completed" in events, events
    # Inside its workspace Codex asks nothing in these modes: lorch's policy is not consulted.
    assert "system.permission" not in events
    steps = ["patch", "attack", "done", "review", "review-done"]
    assert [r.step for r in ep.requests] == steps, ep.requests
    # The reviewer's verdict, by its own apply_patch into its own reviews/.
    assert json.loads((ws / "reviews" / f"{TASK}.json").read_text()) == VERDICT

    # lorch's files were out of its reach (the "done" step saw each attack refused).
    assert (ws / "lorch.json").read_bytes() == config_before
    assert not (ws / "state" / "planted").exists()


@needs_bwrap
def test_codex_s_own_sandbox_cannot_start_with_its_home_under_tmp(
    codex_acp: list[str],
    endpoint_for: Any,
    lorch_bin: str,
    clean_env: dict[str, str],
    tmp_path: Path,
) -> None:
    """With lorch's private HOME in a workspace under /tmp, workspace-write breaks
    every command (the edit tool still works): there, use danger-full-access."""
    ep = endpoint_for(_model_script(), "codex")
    ws = _workspace(tmp_path, codex_acp, ep.url, None, sandbox_mode="workspace-write")
    done = _run(lorch_bin, clean_env, ws)
    assert done.returncode == 0, done.stderr + done.stdout
    assert (ws / "hello.py").read_text() == HELLO
    assert not (ws / "ran.txt").exists()
    steps = ["patch", "attack", "no-sandbox-helper", "review", "review-done"]
    assert [r.step for r in ep.requests] == steps
    # Without its sandbox Codex asks before each apply_patch; lorch's policy allows them.
    (ledger,) = (ws / "events").glob("*.ndjson")
    asked = [
        (r["payload"]["role"], r["payload"]["kind"], r["payload"]["paths"], r["payload"]["allowed"])
        for r in map(json.loads, ledger.read_text().splitlines())
        if r.get("event") == "system.permission"
    ]
    assert asked == [
        ("builder", "edit", ["hello.py"], True),
        ("reviewer", "edit", [f"reviews/{TASK}.json"], True),
    ]
