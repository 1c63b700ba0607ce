"""Evidence that cannot be forged (issue 22, point 2), by real hostile agents, sandbox off.

Each agent (tests/agents/hostile/agent.py) attacks lorch's own files from
inside a run: it appends forged records to the ledger, deletes it, forges a
receipt, rewrites a verdict or lorch.json. lorch must stop with one line naming
what is not its own, and lose nothing it can still prove.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import Workspace, answered_by, assert_clean_exit, records, run_ids

pytestmark = pytest.mark.e2e

HONEST = [
    ("builder", "builder.completed"),
    ("reviewer", "review.completed"),
    ("spec_maintainer", "spec.no_changes_needed"),
]


OFF = {"sandbox": "none"}  # the lorch-side defences, with no sandbox to help them


def unsandboxed(hostile_ws: Workspace, attacks: dict[str, str]) -> Path:
    return hostile_ws(attacks, builder=OFF, reviewer=OFF, spec_maintainer=OFF)


def raw_records(ws: Path) -> list[dict[str, Any]]:
    """Every line of the ledger as JSON, lorch's or not (no chain check)."""
    path = ws / "events" / f"{run_ids(ws)[-1]}.ndjson"
    return [json.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@pytest.fixture
def reap() -> Iterator[list[Path]]:
    """Workspaces whose agents a killed lorch left running: ended after the test."""
    left: list[Path] = []
    yield left
    for ws in left:
        for r in raw_records(ws):
            if r.get("event") == "system.agent_started":
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(int(r["payload"]["pgid"]), signal.SIGKILL)


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


def verify(lorch, ws: Path):  # type: ignore[no-untyped-def]
    return lorch("verify", "--workspace", str(ws), "--run", run_ids(ws)[-1])


def test_forged_review_spec_and_end_then_a_kill_are_refused_by_resume_and_verify(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
    reap: list[Path],
) -> None:
    ws = unsandboxed(hostile_ws, {"builder": "forged_records"})
    reap.append(ws)
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == -signal.SIGKILL
    raw = raw_records(ws)
    first = next(i for i, x in enumerate(raw, 1) if x.get("event") == "review.completed")
    assert [x["event"] for x in raw[first - 1 :]] == [
        "review.completed",
        "spec.no_changes_needed",
        "system.run_completed",
    ]
    before = (ws / "events" / f"{run_ids(ws)[-1]}.ndjson").read_bytes()
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 1, r.stdout
    line = one_line(r.stderr)
    assert f".ndjson:{first}: record {first} (review.completed from reviewer) is not lorch's" in (
        line
    )
    assert "already completed" not in r.stdout
    # Nothing lorch can prove is lost: the ledger is left exactly as found.
    assert (ws / "events" / f"{run_ids(ws)[-1]}.ndjson").read_bytes() == before
    v = verify(lorch, ws)
    assert v.returncode == 1
    assert f"record {first} (review.completed from reviewer) is not lorch's" in v.stdout


def test_a_forged_restart_mid_run_stops_the_run_at_once(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
    reap: list[Path],
) -> None:
    ws = unsandboxed(hostile_ws, {"builder": "forged_restart"})
    reap.append(ws)
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 1, r.stdout
    assert "bytes lorch did not write were added after its record" in one_line(r.stderr)
    raw = raw_records(ws)
    forged = next(i for i, x in enumerate(raw, 1) if x.get("event") == "system.agent_restarted")
    assert forged == len(raw), "lorch wrote nothing after the foreign line"
    assert not any(x.get("action") == "review" for x in raw), "no step ran after it"
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 1
    assert f"record {forged} (system.agent_restarted from system) is not lorch's" in one_line(
        r.stderr
    )


def test_a_ledger_deleted_mid_run_stops_at_once_and_the_run_resumes(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = unsandboxed(hostile_ws, {"builder": "delete_ledger"})
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 1, r.stdout
    line = one_line(r.stderr)
    assert "the ledger was deleted while the run was going" in line and "restored" in line
    recs = records(ws)  # the restored ledger holds the chain: every record is lorch's
    assert not any(x.get("action") == "review" for x in recs), "no step ran into nothing"
    r = lorch("resume", "--workspace", str(ws))
    assert_clean_exit(r)
    assert answered_by(ws) == HONEST
    assert verify(lorch, ws).returncode == 0


def test_a_deleted_ledger_at_resume_is_one_line_naming_it(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = unsandboxed(hostile_ws, {})
    assert_clean_exit(lorch("run", "--workspace", str(ws)))
    rid = run_ids(ws)[-1]
    (ws / "events" / f"{rid}.ndjson").unlink()
    for args in (["--run", rid], []):
        r = lorch("resume", "--workspace", str(ws), *args)
        assert r.returncode == 1
        assert f"the ledger of run {rid} is gone" in one_line(r.stderr)


def test_a_ledger_cut_in_the_middle_is_one_line_and_left_as_it_is(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = unsandboxed(hostile_ws, {})
    assert_clean_exit(lorch("run", "--workspace", str(ws)))
    path = ws / "events" / f"{run_ids(ws)[-1]}.ndjson"
    lines = path.read_bytes().splitlines(keepends=True)
    cut = b"".join(lines[: len(lines) // 2])  # at a line boundary: the chain still holds
    path.write_bytes(cut)
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 1
    assert f"holds {len(lines) // 2} records, but lorch had recorded {len(lines)}" in one_line(
        r.stderr
    )
    assert path.read_bytes() == cut
    v = verify(lorch, ws)
    assert v.returncode == 1 and "it was cut after record" in v.stdout


def test_a_forged_receipt_for_a_review_that_never_happened_fails_verify(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = unsandboxed(hostile_ws, {"builder": "forged_receipt"})
    assert_clean_exit(lorch("run", "--workspace", str(ws)))
    v = verify(lorch, ws)
    assert v.returncode == 1, v.stdout
    assert (
        "step-9.json: a review answer (ik:abababababababab…) the ledger never accepted" in v.stdout
    )


def test_a_verdict_flipped_as_the_review_ends_approves_nothing(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = unsandboxed(hostile_ws, {"builder": "flip_verdict", "reviewer": "file_changes_once"})
    assert_clean_exit(lorch("run", "--workspace", str(ws)))
    recs = records(ws)
    captured = [x["payload"] for x in recs if x.get("event") == "system.verdict"]
    # The first capture holds the builder's flip; the reviewer's answer said otherwise.
    assert json.loads(captured[0]["text"])["status"] == "approved"
    reviews = [x for x in recs if x.get("event") == "review.completed"]
    assert reviews[0]["status"] == "changes_requested"
    actions = [x["action"] for x in recs if x.get("kind") == "command"]
    assert actions == ["implement", "review", "implement_changes", "review", "update_spec"]
    assert verify(lorch, ws).returncode == 0


def test_a_verdict_rewritten_after_its_capture_is_ignored_and_reported(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = unsandboxed(
        hostile_ws,
        {"builder": "spoil_verdict", "reviewer": "verdict_file", "spec_maintainer": "await_spoil"},
    )
    r = lorch("run", "--workspace", str(ws))
    assert_clean_exit(r)
    (changed,) = [x["payload"] for x in records(ws) if x.get("event") == "system.verdict_changed"]
    assert changed["path"] == "reviews/T-0042.json"
    assert "reviews/T-0042.json changed after its turn" in r.stdout
    transcript = (ws / "transcripts" / f"{run_ids(ws)[-1]}.txt").read_text()
    assert "reviews/T-0042.json changed after its turn" in transcript
    v = verify(lorch, ws)
    assert v.returncode == 1
    assert "reviews/T-0042.json changed after the turn that wrote it" in v.stdout


def test_a_verdict_changed_after_the_run_fails_verify(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = unsandboxed(hostile_ws, {"reviewer": "verdict_file"})
    assert_clean_exit(lorch("run", "--workspace", str(ws)))
    assert verify(lorch, ws).returncode == 0
    (ws / "reviews" / "T-0042.json").write_text('{"status": "changes_requested"}\n')
    v = verify(lorch, ws)
    assert v.returncode == 1 and "but lorch captured sha256:" in v.stdout


def test_a_rewritten_lorch_json_is_refused_then_applied_only_when_accepted(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
    reap: list[Path],
) -> None:
    ws = unsandboxed(hostile_ws, {"builder": "rewrite_config"})
    reap.append(ws)
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == -signal.SIGKILL
    before = raw_records(ws)
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert "agents.reviewer.cmd, agents.reviewer.env.HOSTILE_INJECTED" in line
    assert "--accept-config-change" in line
    assert raw_records(ws) == before  # nothing recorded, no agent started
    r = lorch("resume", "--workspace", str(ws), "--accept-config-change")
    assert_clean_exit(r)
    (resumed,) = [x["payload"] for x in records(ws) if x.get("event") == "system.resumed"]
    assert resumed["config_changed"] == [
        "agents.reviewer.cmd",
        "agents.reviewer.env.HOSTILE_INJECTED",
    ]
    assert verify(lorch, ws).returncode == 0
