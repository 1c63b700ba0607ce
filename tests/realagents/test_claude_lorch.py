"""lorch drives the real Claude Code agent as its builder, offline, and survives a kill mid-turn.

The builder is the pinned ``claude-agent-acp`` adapter (the real Claude Code),
talking to a scripted model endpoint; the reviewer and the spec maintainer are
mockagent. The reviewer asks for changes once, so the builder has two turns:
``implement`` (Write, Edit, Bash) and ``implement_changes`` (Bash appending to a log,
Read, Edit, Bash).

A clean run is the baseline. A second run is killed (SIGKILL to lorch alone, its
agents left as orphans) while the endpoint holds the model's last answer of
``implement_changes`` — after that turn's Edit and Bash changed the workspace. ``lorch
resume`` must end the orphans, roll the workspace back to the turn's checkpoint,
prompt the turn again and finish: the workspace equals the clean run's, and the
endpoint's log shows the completed ``implement`` turn was never prompted again.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.realagents import adapters

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(900)]

TASK = "T-0042"
# The prompt names its command; the endpoint finds that tag in every request.
TAG = "[lorch $action $task_id round $round]"
COMMAND_PATTERN = r"\[lorch [a-z_]+ T-0042 round \d+\]"
IMPLEMENT = f"[lorch implement {TASK} round 1]"
CHANGES = f"[lorch implement_changes {TASK} round 2]"
LORCH_DIRS = {"events", "state", "receipts", "logs", "snapshots", "transcripts"}


def _tool(name: str, **tool_input: Any) -> dict[str, Any]:
    return {"type": "tool_use", "name": name, "input": tool_input}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _model_script(*, hold: str | None = None) -> dict[str, Any]:
    """What the model answers, turn by turn; ``hold`` stalls one step's first answer."""
    hello = "{cwd}/hello.py"
    steps = [
        # implement: write the file, edit it, run it.
        {
            "name": "write",
            "when": {"prompt_contains": IMPLEMENT, "turn": 0},
            "reply": [
                _text("Creating hello.py."),
                _tool("Write", file_path=hello, content="print('hello')\n"),
            ],
        },
        {
            "name": "edit",
            "when": {"prompt_contains": IMPLEMENT, "after_tool": "Write", "tool_error": False},
            "reply": [
                _tool("Edit", file_path=hello, old_string="'hello'", new_string="'hello, world'")
            ],
        },
        {
            "name": "bash",
            "when": {"prompt_contains": IMPLEMENT, "after_tool": "Edit", "tool_error": False},
            "reply": [
                _tool("Bash", command="python3 hello.py > out.txt", description="Run hello.py")
            ],
        },
        {
            "name": "done",
            "when": {"prompt_contains": IMPLEMENT, "after_tool": "Bash", "tool_error": False},
            "reply": [_text("hello.py prints hello, world; its output is in out.txt.")],
        },
        # implement_changes: log the attempt (an append: done twice, it shows), read the
        # file (Edit needs it read in this session), change it, run it again.
        {
            "name": "changes-log",
            "when": {"prompt_contains": CHANGES, "turn": 0},
            "reply": [
                _text("Logging this attempt."),
                _tool("Bash", command="echo ran >> log.txt", description="Log the attempt"),
            ],
        },
        {
            "name": "changes-read",
            "when": {"prompt_contains": CHANGES, "turn": 1, "tool_error": False},
            "reply": [_tool("Read", file_path=hello)],
        },
        {
            "name": "changes-edit",
            "when": {"prompt_contains": CHANGES, "turn": 2, "tool_error": False},
            "reply": [
                _tool(
                    "Edit",
                    file_path=hello,
                    old_string="'hello, world'",
                    new_string="'Hello, World!'",
                )
            ],
        },
        {
            "name": "changes-bash",
            "when": {"prompt_contains": CHANGES, "turn": 3, "tool_error": False},
            "reply": [
                _tool("Bash", command="python3 hello.py > out.txt", description="Run hello.py")
            ],
        },
        {
            "name": "changes-done",
            "when": {"prompt_contains": CHANGES, "turn": 4, "tool_error": False},
            "reply": [_text("Done: hello.py now prints Hello, World!")],
        },
        {
            "name": "refused",
            "when": {"tool_error": True},
            "reply": [_text("A tool failed; stopping here.")],
        },
    ]
    for step in steps:
        if step["name"] == hold:
            step["hold"] = 1
    return {"command_pattern": COMMAND_PATTERN, "steps": steps}


def _reviewer_fixture() -> dict[str, Any]:
    def review(status: str) -> dict[str, Any]:
        return {
            "files": [
                {
                    "path": "reviews/{task_id}.json",
                    "content": json.dumps({"status": status, "round": "{round}"}) + "\n",
                }
            ],
            "events": [
                {
                    "type": "review.completed",
                    "status": status,
                    "payload": {"review_path": "reviews/{task_id}.json", "summary": status},
                }
            ],
        }

    return {
        "responses": {
            "review": {
                "sequence": [review("changes_requested"), review("approved")],
                "after": "repeat_last",
            }
        }
    }


def _spec_fixture() -> dict[str, Any]:
    return {
        "responses": {
            "update_spec": {
                "events": [{"type": "spec.no_changes_needed", "payload": {"summary": "spec holds"}}]
            }
        }
    }


def _workspace(root: Path, claude: list[str], endpoint_url: str, home: Path) -> Path:
    ws = root / "ws"
    (ws / "specs").mkdir(parents=True)
    (ws / "fixtures").mkdir()
    (ws / "specs" / "SPEC.md").write_text("# hello\n\nhello.py prints a greeting.\n")
    (ws / "fixtures" / "reviewer.json").write_text(json.dumps(_reviewer_fixture()))
    (ws / "fixtures" / "spec.json").write_text(json.dumps(_spec_fixture()))
    env = adapters.offline_env(endpoint_url, home)
    del env["PATH"]  # lorch passes its own PATH
    config = {
        "version": "1",
        "task": {
            "id": TASK,
            "goal": "Write hello.py, which prints a greeting.",
            "spec_path": "specs/SPEC.md",
            "expected_outputs": ["hello.py"],
        },
        "agents": {
            "builder": {
                "transport": "acp",
                "cmd": claude,
                "env": env,
                "prompts": {
                    "implement": TAG + " You are the builder. $goal Work only in $workspace.",
                    "implement_changes": TAG + " The reviewer asks for changes:\n$notes\n"
                    "Make them in $workspace.",
                },
            },
            "reviewer": {
                "cmd": ["mockagent", "--script", "fixtures/reviewer.json", "--type", "reviewer"]
            },
            "spec_maintainer": {
                "cmd": ["mockagent", "--script", "fixtures/spec.json", "--type", "spec_maintainer"]
            },
        },
        "policy": {"backoff": {"initial_s": 0.05, "factor": 2, "max_s": 1}},
    }
    (ws / "lorch.json").write_text(json.dumps(config, indent=2))
    return ws


def _files(ws: Path) -> dict[str, bytes]:
    """The work in the workspace: no lorch state or config (it names the endpoint), no
    hidden agent state."""
    out: dict[str, bytes] = {}
    for path in sorted(ws.rglob("*")):
        rel = path.relative_to(ws)
        if rel.parts[0] in LORCH_DIRS or rel.as_posix() == "lorch.json":
            continue
        if any(p.startswith(".") for p in rel.parts):
            continue
        if path.is_file():
            out[rel.as_posix()] = path.read_bytes()
    return out


def _lorch(lorch_bin: str, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [lorch_bin, *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


def _turn_starts(endpoint: Any, command: str) -> int:
    """How often ``command`` was prompted: requests that open a conversation (turn 0)."""
    return sum(
        1
        for r in endpoint.requests
        if r.path == "/v1/messages" and r.command == command and r.turn == 0
    )


def test_lorch_resumes_a_real_claude_code_builder_killed_mid_turn(
    claude_acp: list[str],
    endpoint_for: Any,
    lorch_bin: str,
    clean_env: dict[str, str],
    tmp_path: Path,
) -> None:
    # The clean run: the baseline workspace and request counts.
    clean_ep = endpoint_for(_model_script(), "clean")
    clean_ws = _workspace(tmp_path / "clean", claude_acp, clean_ep.url, tmp_path / "home-clean")
    done = _lorch(lorch_bin, clean_env, "run", "--workspace", str(clean_ws))
    assert done.returncode == 0, done.stderr + done.stdout
    baseline = _files(clean_ws)
    assert baseline["hello.py"] == b"print('Hello, World!')\n"
    assert baseline["out.txt"] == b"Hello, World!\n"
    assert baseline["log.txt"] == b"ran\n"
    steps = [r.step for r in clean_ep.requests if r.path == "/v1/messages"]
    assert steps == [
        "write", "edit", "bash", "done",
        "changes-log", "changes-read", "changes-edit", "changes-bash", "changes-done",
    ]  # fmt: skip
    assert (clean_ep.count(IMPLEMENT), clean_ep.count(CHANGES)) == (4, 5)

    # The crashed run: lorch is killed while the model holds its last answer of
    # implement_changes: the turn has appended to log.txt and edited hello.py, but
    # has not ended.
    ep = endpoint_for(_model_script(hold="changes-done"), "crash")
    ws = _workspace(tmp_path / "crash", claude_acp, ep.url, tmp_path / "home-crash")
    crash_log = tmp_path / "crashed-run.stderr"
    with open(crash_log, "wb") as err:
        lorch = subprocess.Popen(
            [lorch_bin, "run", "--workspace", str(ws)],
            env=clean_env,
            stdout=subprocess.DEVNULL,
            stderr=err,
            start_new_session=True,
        )
    try:
        _wait_held(ep, "changes-done", lorch, crash_log)
    finally:
        os.kill(lorch.pid, signal.SIGKILL)  # lorch only: its agents live on as orphans
        lorch.wait()
    assert (ws / "hello.py").read_text() == "print('Hello, World!')\n"
    assert (ws / "log.txt").read_text() == "ran\n"  # an append: done twice would show

    resumed = _lorch(lorch_bin, clean_env, "resume", "--workspace", str(ws))
    assert resumed.returncode == 0, resumed.stderr + resumed.stdout

    # The run completed with the clean run's workspace, each effect once.
    # log.txt holds one "ran": the cut turn's append was rolled back before the re-run.
    assert _files(ws) == baseline
    # implement completed before the kill: never prompted again, no model call more.
    assert _turn_starts(ep, IMPLEMENT) == 1
    assert ep.count(IMPLEMENT) == clean_ep.count(IMPLEMENT)
    # implement_changes was cut short: prompted again once, from its checkpoint.
    assert _turn_starts(ep, CHANGES) == 2
    attempt = ["changes-log", "changes-read", "changes-edit", "changes-bash", "changes-done"]
    assert [r.step for r in ep.requests if r.command == CHANGES] == attempt + attempt
    assert [r.held for r in ep.requests if r.step == "changes-done"] == [True, False]
    verified = _lorch(lorch_bin, clean_env, "verify", "--workspace", str(ws), "--run", _run_id(ws))
    assert verified.returncode == 0, verified.stderr + verified.stdout


def _wait_held(
    endpoint: Any, step: str, lorch: subprocess.Popen[bytes], stderr: Path, deadline: float = 600
) -> None:
    """Wait until ``step``'s answer is held, failing at once if lorch ends first."""
    end = time.monotonic() + deadline
    while True:
        try:
            endpoint.wait_held(step, timeout=1)
            return
        except TimeoutError:
            if lorch.poll() is not None:
                pytest.fail(f"lorch exited {lorch.returncode} first: {stderr.read_text()[-2000:]}")
            if time.monotonic() > end:
                raise


def _run_id(ws: Path) -> str:
    (ledger,) = (ws / "events").glob("*.ndjson")
    return ledger.stem
