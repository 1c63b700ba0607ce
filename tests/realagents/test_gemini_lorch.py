"""lorch drives the real Gemini CLI as builder, reviewer and spec maintainer, offline.

Gemini CLI (pinned by npm, ``gemini --acp``) talks to the scripted endpoint's
Gemini API (``GOOGLE_GEMINI_BASE_URL``). Its own ``write_file`` tool does the
work: the builder creates ``hello.py`` and overwrites ``README.md``, the
reviewer writes its verdict (a new file), the spec maintainer overwrites the
spec and writes its verdict. Every write is asked of lorch's permission policy
first, so each one is a ``system.permission`` record in the ledger.

Gemini reads a file before writing it; with lorch's file service offered
(``fs``), that read goes through lorch and a missing file is the ACP error
``-32002``, which this Gemini CLI does not take for "does not exist": no new
file can be written (``test_gemini_cannot_create_files_through_lorchs_fs``
pins that, so the default stays off until it changes).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.realagents import adapters

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(600)]

TASK = "T-0042"
TAG = "[lorch $action $task_id round $round]"
COMMAND_PATTERN = r"\[lorch [a-z_]+ T-0042 round \d+\]"
IMPLEMENT = f"[lorch implement {TASK} round 1]"
REVIEW = f"[lorch review {TASK} round 1]"
SPEC = f"[lorch update_spec {TASK} round 1]"
# Gemini CLI's model router (model "auto") asks this before each turn.
ROUTER = "Task Routing AI"


def _write(path: str, content: str) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "name": "write_file",
        "input": {"file_path": path, "content": content},
    }


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def _after(prompt: str, turn: int) -> dict[str, Any]:
    return {"prompt_contains": prompt, "turn": turn, "has_tools": True}


REVIEW_VERDICT = {"status": "approved", "summary": "hello.py prints the greeting."}
SPEC_VERDICT = {"status": "updated", "summary": "The spec names the greeting."}


def _model_script() -> dict[str, Any]:
    route = json.dumps({"complexity_reasoning": "simple", "complexity_score": 10})
    steps = [
        {"name": "route", "when": {"system_contains": ROUTER}, "reply": [_text(route)]},
        {
            "name": "build-new",
            "when": _after(IMPLEMENT, 0),
            "reply": [_text("Creating hello.py."), _write("{cwd}/hello.py", "print('hello')\n")],
        },
        {
            "name": "build-over",
            "when": _after(IMPLEMENT, 1) | {"tool_error": False},
            "reply": [_write("{cwd}/README.md", "# hello\n\nRun hello.py.\n")],
        },
        {
            "name": "build-done",
            "when": _after(IMPLEMENT, 2) | {"tool_error": False},
            "reply": [_text("hello.py written; README.md says how to run it.")],
        },
        {
            "name": "review",
            "when": _after(REVIEW, 0),
            "reply": [_write(f"{{cwd}}/reviews/{TASK}.json", json.dumps(REVIEW_VERDICT))],
        },
        {
            "name": "review-done",
            "when": _after(REVIEW, 1) | {"tool_error": False},
            "reply": [_text("Approved.")],
        },
        {
            "name": "spec-over",
            "when": _after(SPEC, 0),
            "reply": [_write("{cwd}/specs/SPEC.md", "# hello\n\nhello.py prints hello.\n")],
        },
        {
            "name": "spec-verdict",
            "when": _after(SPEC, 1) | {"tool_error": False},
            "reply": [_write(f"{{cwd}}/spec_notes/{TASK}.json", json.dumps(SPEC_VERDICT))],
        },
        {
            "name": "spec-done",
            "when": _after(SPEC, 2) | {"tool_error": False},
            "reply": [_text("Spec updated.")],
        },
        {"name": "failed", "when": {"tool_error": True}, "reply": [_text("A tool failed.")]},
    ]
    return {"command_pattern": COMMAND_PATTERN, "steps": steps}


def _workspace(root: Path, gemini: list[str], url: str, *, fs: bool | None) -> Path:
    ws = root / "ws"
    (ws / "specs").mkdir(parents=True)
    (ws / "specs" / "SPEC.md").write_text("# hello\n")
    (ws / "README.md").write_text("# hello\n")
    agents: dict[str, Any] = {}
    for role, action in (
        ("builder", "implement"),
        ("reviewer", "review"),
        ("spec_maintainer", "update_spec"),
    ):
        env = adapters.gemini_offline_env(url, root / f"home-{role}")
        del env["PATH"]  # lorch passes its own PATH
        agents[role] = {
            "transport": "acp",
            "cmd": gemini,
            "env": env,
            "prompts": {action: TAG + " You are the " + role + ". Work only in $workspace."},
        }
        if fs is not None:
            agents[role]["fs"] = fs
    config = {
        "version": "1",
        "task": {
            "id": TASK,
            "goal": "Write hello.py, which prints a greeting.",
            "spec_path": "specs/SPEC.md",
            "expected_outputs": ["hello.py"],
        },
        "agents": agents,
        "policy": {"max_attempts": 1, "backoff": {"initial_s": 0.05, "factor": 2, "max_s": 1}},
    }
    (ws / "lorch.json").write_text(json.dumps(config, indent=2))
    return ws


def _records(ws: Path) -> list[dict[str, Any]]:
    (ledger,) = (ws / "events").glob("*.ndjson")
    return [json.loads(line) for line in ledger.read_text().splitlines()]


def _run(lorch_bin: str, env: dict[str, str], ws: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [lorch_bin, "run", "--workspace", str(ws)],
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
        check=False,
    )


def test_gemini_builds_reviews_and_maintains_the_spec_under_lorch(
    gemini_cli: list[str],
    endpoint_for: Any,
    lorch_bin: str,
    clean_env: dict[str, str],
    tmp_path: Path,
) -> None:
    ep = endpoint_for(_model_script(), "gemini")
    ws = _workspace(tmp_path, gemini_cli, ep.url, fs=None)  # the default for Gemini CLI
    done = _run(lorch_bin, clean_env, ws)
    assert done.returncode == 0, done.stderr + done.stdout

    # New files and overwritten ones, by Gemini's own write_file tool.
    assert (ws / "hello.py").read_text() == "print('hello')\n"
    assert (ws / "README.md").read_text() == "# hello\n\nRun hello.py.\n"
    assert json.loads((ws / "reviews" / f"{TASK}.json").read_text()) == REVIEW_VERDICT
    assert (ws / "specs" / "SPEC.md").read_text() == "# hello\n\nhello.py prints hello.\n"
    assert json.loads((ws / "spec_notes" / f"{TASK}.json").read_text()) == SPEC_VERDICT

    # lorch's policy decided every write: one allowed edit per file.
    records = _records(ws)
    decided = sorted(
        (path, r["payload"]["kind"], r["payload"]["allowed"])
        for r in records
        if r.get("event") == "system.permission"
        for path in r["payload"]["paths"]
    )
    assert decided == [
        ("README.md", "edit", True),
        ("hello.py", "edit", True),
        (f"reviews/{TASK}.json", "edit", True),
        (f"spec_notes/{TASK}.json", "edit", True),
        ("specs/SPEC.md", "edit", True),
    ], decided
    events = [r.get("event") for r in records]
    assert "review.completed" in events and "spec.updated" in events

    # The model calls: one router call before each turn, then the scripted steps.
    steps = [r.step for r in ep.requests]
    assert steps.count("route") == 3
    assert [s for s in steps if s != "route"] == [
        "build-new", "build-over", "build-done",
        "review", "review-done",
        "spec-over", "spec-verdict", "spec-done",
    ]  # fmt: skip
    assert not [r for r in ep.requests if r.status != 200], ep.requests
