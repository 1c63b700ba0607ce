"""lorch's tools for ACP agents: conformance --transport acp (issue 12, point 9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import AGENT

pytestmark = pytest.mark.e2e


def _fs_turn(**how: object) -> dict[str, object]:
    """The turn the fs check's prompt gets: the file it asks for, through lorch's fs."""
    write = {"write": "lorch-fs-check/new-file.txt", "via": "fs", **how}
    return {
        "match": "ACP-FS-001",
        "calls": [[{**write, "content": "created through lorch's file service\n"}]],
    }


NOT_IDEMPOTENT = {
    "turns": [
        _fs_turn(),
        {
            "calls": [
                [
                    {"write": "src/a.py", "content": "a = 1\n"},
                    {"append": "log.txt", "content": "one turn\n"},
                    # Real agents ask before they edit: the battery copes with the answers.
                    {
                        "permission": {"kind": "edit", "title": "Write b", "paths": ["src/b.py"]},
                        "then": [{"write": "src/b.py", "content": "b = 2\n"}],
                    },
                ]
            ]
        },
    ]
}


def _lorch(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lorch", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_conformance_acp_bare_fails_as_expected_and_passes_under_checkpoints(
    tmp_path: Path,
) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps(NOT_IDEMPOTENT))
    report = tmp_path / "report.json"
    r = _lorch(
        "conformance",
        "--transport",
        "acp",
        "--json",
        str(report),
        "--",
        sys.executable,
        str(AGENT),
        str(script),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines() if line.startswith("ACP-")}
    assert "FAIL (expected)" in rows["ACP-IDEMP-001-bare"]
    assert "changed log.txt" in rows["ACP-IDEMP-001-bare"]
    assert "ACP has no idempotency key" in rows["ACP-IDEMP-001-bare"]
    assert "FAIL (expected)" in rows["ACP-IDEMP-004-bare"]
    assert " PASS " in rows["ACP-IDEMP-001-lorch"] and " PASS " in rows["ACP-IDEMP-004-lorch"]
    assert " PASS " in rows["ACP-FS-001"] and "fs/write_text_file ×1" in rows["ACP-FS-001"]
    assert "CONFORMS" in r.stdout


def test_conformance_acp_fails_an_agent_that_cannot_create_a_file_through_lorchs_fs(
    tmp_path: Path,
) -> None:
    # Like Gemini CLI 0.61: it reads through lorch before writing, and takes a
    # missing file's -32002 for a failure, so the new file is never written.
    script = tmp_path / "script.json"
    script.write_text(json.dumps({"turns": [_fs_turn(read_first=True)]}))
    r = _lorch(
        "conformance", "--transport", "acp", "--only", "ACP-FS-001", "--",
        sys.executable, str(AGENT), str(script), cwd=tmp_path,
    )  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    (row,) = [line for line in r.stdout.splitlines() if line.startswith("ACP-FS-001")]
    assert " FAIL " in row and "required" in row
    assert "ended without lorch-fs-check/new-file.txt on disk (fs/read_text_file ×1)" in row
    assert 'leave "fs" off' in row
    assert "DOES NOT CONFORM" in r.stdout


def test_conformance_acp_names_an_agent_that_does_not_start(tmp_path: Path) -> None:
    r = _lorch(
        "conformance", "--transport", "acp", "--", "sh", "-c", "echo nope >&2; exit 3", cwd=tmp_path
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "exited (code 3)" in r.stderr and "nope" in r.stderr
