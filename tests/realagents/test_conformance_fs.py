"""The ACP battery's file-service check (ACP-FS-001) on the real agents, offline.

Asked for a new file with lorch's ``fs/*`` offered, Gemini CLI 0.61 reads the
missing file through lorch first, takes the ``-32002`` answer for a failure and
never writes: the check fails, naming the read and Gemini's own error. Claude
Code's adapter writes with its own tool and passes. (With ``fs`` off, lorch's
default, Gemini creates files: ``test_gemini_lorch.py``.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lorch.conformance.acp_battery import FS_CHECK, FS_CONTENT, FS_FILE
from tests.realagents import adapters

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(300)]

ROUTE = json.dumps({"complexity_reasoning": "one file", "complexity_score": 10})


def _script(tool: str, path_arg: str, content_arg: str) -> dict[str, Any]:
    write = {path_arg: "{cwd}/" + FS_FILE, content_arg: FS_CONTENT + "\n"}
    return {
        "steps": [
            {
                # Gemini CLI's model router asks first (its answer must be this JSON).
                "name": "route",
                "when": {"system_contains": "Task Routing AI"},
                "reply": [{"type": "text", "text": ROUTE}],
            },
            {
                "name": "write",
                "when": {"prompt_contains": FS_CHECK, "turn": 0, "has_tools": True},
                "reply": [{"type": "tool_use", "name": tool, "input": write}],
            },
            {
                "name": "done",
                "when": {"prompt_contains": FS_CHECK, "turn": 1, "has_tools": True},
                "reply": [{"type": "text", "text": "Done."}],
            },
        ],
        # The battery's baseline turn: nothing to do.
        "fallback": [{"type": "text", "text": "Nothing to do."}],
    }


def _conformance(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lorch", "conformance", "--transport", "acp", "--timeout", "120",
         "--only", FS_CHECK, "--", *argv],
        env=env, capture_output=True, text=True, timeout=280, check=False,
    )  # fmt: skip


def _row(out: str) -> str:
    (row,) = [line for line in out.splitlines() if line.startswith(FS_CHECK)]
    return row


def test_gemini_cannot_create_a_file_through_lorchs_fs_and_the_check_says_so(
    gemini_cli: list[str], endpoint_for: Any, tmp_path: Path
) -> None:
    ep = endpoint_for(_script("write_file", "file_path", "content"))
    env = {**os.environ, **adapters.gemini_offline_env(ep.url, tmp_path / "home")}
    r = _conformance(gemini_cli, env)
    assert r.returncode == 1, r.stdout + r.stderr
    row = _row(r.stdout)
    assert " FAIL " in row and "fs/read_text_file ×" in row, row
    assert "fs/write_text_file" not in row  # it never got to write
    assert "Error checking existing file: Resource not found" in row, row
    assert 'leave "fs" off' in row
    assert ep.count(step="write") == 1  # it was asked, and tried


def test_claude_code_creates_the_file_and_passes(
    claude_acp: list[str], endpoint_for: Any, tmp_path: Path
) -> None:
    ep = endpoint_for(_script("Write", "file_path", "content"))
    home = tmp_path / "home"
    env = {**os.environ, **adapters.offline_env(ep.url, home)}
    r = _conformance(claude_acp, env)
    assert r.returncode == 0, r.stdout + r.stderr
    row = _row(r.stdout)
    assert " PASS " in row and f"{FS_FILE} created" in row, row
    assert ep.count(step="write") == 1
