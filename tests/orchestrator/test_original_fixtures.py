"""The original fixture format, run unchanged through lorch with the original flags.

Each fixture of ``tests/mockagent/original/`` is the script of all three roles
(``mockagent -type ROLE -script FILE``), as the original lorch.json files use them,
under a MASTER-SPEC §8.2 lorch.json.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from .conftest import Runner, records, run_ids

pytestmark = pytest.mark.e2e

ORIGINAL = Path(__file__).parent.parent / "mockagent" / "original"

# fixture -> (exit code, what stdout + stderr must say, files and their sizes)
OUTCOMES = {
    "all-good.json": (0, "[lorch] DONE", {"src/widget.py": 700, "specs/SPEC.md": 1500}),
    "progress.json": (
        0,
        "[lorch] DONE",
        {"src/login.py": 1024, "tests/test_login.py": 512, "src/session.py": 0},
    ),
    "tests-red-allowed.json": (0, "tests fail (failures allowed): 2 of 12 failed", {}),
    "changes-forever.json": (1, "review round cap of 2 reached", {}),
    # The spec loop's reviews count towards the review cap.
    "spec-notes.json": (
        1,
        "review round cap of 2 reached",
        {"spec_notes/NOTES-FOR-TASK.json": 300},
    ),
    "compile-error.json": (
        1,
        "after 3 attempts: error: build broke (name 'frobnicate' is not defined) at src/app.py:7",
        {},
    ),
    # An answer without a test status is a protocol error of its attempt, each time.
    "tests-missing.json": (
        1,
        "after 3 attempts: protocol_error: protocol error: builder.completed without "
        "payload.tests.status pass or fail (found None)",
        {},
    ),
    "tests-no-status.json": (
        1,
        "after 3 attempts: protocol_error: protocol error: builder.completed without "
        "payload.tests.status pass or fail (found None)",
        {},
    ),
    "tests-red.json": (1, "builder tests failed: 3 of 12 failed", {}),
}


def workspace(tmp_path: Path, fixture: str) -> Path:
    ws = tmp_path / "ws"
    (ws / "specs").mkdir(parents=True)
    (ws / "specs" / "SPEC.md").write_text("# Spec\n")
    script = str(ORIGINAL / fixture)
    config = {
        "version": "1.0",
        "workspace_root": ".",
        "policy": {
            "concurrency": 1,
            "retry": {
                "max_attempts": 3,
                "backoff": {"initial_ms": 5, "max_ms": 20, "multiplier": 2.0, "jitter": "full"},
            },
            "strict_version_pinning": True,
            "parallel_reviews": False,
            "redact_secrets_in_logs": True,
            "max_rounds": 2,
        },
        "agents": {
            role: {"cmd": ["mockagent", "-type", role, "-script", script]}
            for role in ("builder", "reviewer", "spec_maintainer")
        },
        "tasks": [{"id": "T-0042", "goal": "Exercise the original fixtures"}],
    }
    (ws / "lorch.json").write_text(json.dumps(config, indent=2))
    return ws


def test_every_fixture_is_covered() -> None:
    assert set(OUTCOMES) | {"intake-proposal.json", "intake-error.json"} == {
        p.name for p in ORIGINAL.glob("*.json")
    }


@pytest.mark.parametrize("fixture", sorted(OUTCOMES))
def test_original_fixture_through_lorch(tmp_path: Path, lorch: Runner, fixture: str) -> None:
    code, says, files = OUTCOMES[fixture]
    ws = workspace(tmp_path, fixture)
    before = (ORIGINAL / fixture).read_bytes()
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == code, r.stdout + r.stderr
    assert says in r.stdout + r.stderr
    for rel, size in files.items():
        assert (ws / rel).stat().st_size == size, rel
    assert (ORIGINAL / fixture).read_bytes() == before  # run unchanged
    assert not [x for x in records(ws) if x.get("event") == "system.artifact_rejected"]
    if code == 0:
        # Each path is written once in these runs: every receipt holds for the final files.
        for receipt in ws.glob("receipts/*/step-*.json"):
            for art in json.loads(receipt.read_text())["artifacts"]:
                data = (ws / art["path"]).read_bytes()
                assert art["sha256"] == "sha256:" + hashlib.sha256(data).hexdigest()
        v = lorch("verify", "--workspace", str(ws), "--run", run_ids(ws)[0])
        assert v.returncode == 0, v.stdout


def test_the_cause_of_an_error_is_in_the_failure_line_and_transcript(
    tmp_path: Path, lorch: Runner
) -> None:
    ws = workspace(tmp_path, "compile-error.json")
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 1
    cause = "build broke (name 'frobnicate' is not defined) at src/app.py:7"
    last = r.stderr.strip().splitlines()[-1]
    assert cause in last and "builder" in last
    transcript = (ws / "transcripts" / f"{run_ids(ws)[0]}.txt").read_text()
    assert f"[builder] error error: {cause}" in transcript


def test_the_cause_is_redacted(tmp_path: Path, lorch: Runner) -> None:
    ws = workspace(tmp_path, "compile-error.json")
    fx = json.loads((ORIGINAL / "compile-error.json").read_text())
    fx["responses"]["implement"]["events"][1]["payload"]["details"] = "token s3cr3t-v4lue refused"
    (ws / "fx.json").write_text(json.dumps(fx))
    cfg = json.loads((ws / "lorch.json").read_text())
    cfg["agents"]["builder"]["cmd"][-1] = "fx.json"
    (ws / "lorch.json").write_text(json.dumps(cfg))
    r = lorch("run", "--workspace", str(ws), env={"DEMO_API_TOKEN": "s3cr3t-v4lue"})
    assert r.returncode == 1
    assert "token *** refused" in r.stderr
    for text in (r.stdout, r.stderr, (ws / "transcripts" / f"{run_ids(ws)[0]}.txt").read_text()):
        assert "s3cr3t-v4lue" not in text
    assert "s3cr3t-v4lue" not in (ws / "events" / f"{run_ids(ws)[0]}.ndjson").read_text()
