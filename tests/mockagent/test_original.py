"""mockagent is compatible with the original Go mock agent: its flags and its fixtures."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .driver import Agent, command, journal

pytestmark = pytest.mark.e2e


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    d = tmp_path / "ws"
    d.mkdir()
    return d


def test_the_original_single_dash_flags(mockagent_bin: str, ws: Path) -> None:
    fx = ws / "f.json"
    fx.write_text(
        json.dumps({"responses": {"implement": {"events": [{"type": "builder.completed"}]}}})
    )
    a = Agent(mockagent_bin, ws, "-type", "builder", "-script", str(fx), "-no-heartbeat")
    a.send(command())
    assert [e["event"] for e in a.events()] == ["builder.completed"]
    assert a.close() == 0
    assert not any(b'"heartbeat"' in line for line in a.lines)
    # -review-changes-count N: rounds 1..N request changes; -id and a Go duration.
    a = Agent(
        mockagent_bin,
        ws,
        "-type=reviewer",
        "-review-changes-count",
        "1",
        "-id",
        "reviewer#7",
        "-heartbeat-interval",
        "1m30s",
    )
    for rnd, status in ((1, "changes_requested"), (2, "approved")):
        a.send(command("review", role="reviewer", inputs={"round": rnd}))
        ev = a.events()[-1]
        assert (ev["status"], ev["from"]["agent_id"]) == (status, "reviewer#7")
    assert a.close() == 0


def test_a_bad_duration_is_refused(mockagent_bin: str, ws: Path) -> None:
    r = subprocess.run(
        [mockagent_bin, "-type", "builder", "-heartbeat-interval", "10x"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "'10x' is not a duration" in r.stderr


def test_no_files_writes_nothing(mockagent_bin: str, ws: Path) -> None:
    for role, action in (
        ("builder", "implement"),
        ("reviewer", "review"),
        ("spec_maintainer", "update_spec"),
    ):
        a = Agent(mockagent_bin, ws, "--type", role, "--no-files")
        a.send(command(action, role=role))
        evs = a.events()
        assert a.close() == 0
        assert not any("artifacts" in e for e in evs)
    assert sorted(p.name for p in ws.iterdir()) == [".mockagent"]


ORIGINAL = Path(__file__).parent / "original"


def mockagent_validate(mockagent_bin: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [mockagent_bin, "validate", str(path)], capture_output=True, text=True, timeout=30
    )


def test_every_original_format_fixture_loads(mockagent_bin: str) -> None:
    for path in sorted(ORIGINAL.glob("*.json")):
        r = mockagent_validate(mockagent_bin, path)
        assert r.returncode == 0, r.stderr


def test_notes_are_accepted_and_typos_refused_with_a_suggestion(
    mockagent_bin: str, ws: Path
) -> None:
    ok = {"responses": {}, "comment": "a note", "description": "another", "_why": 1}
    (ws / "ok.json").write_text(json.dumps(ok))
    assert mockagent_validate(mockagent_bin, ws / "ok.json").returncode == 0
    for body, where, hint in (
        ({"responce": {}}, "$.responce", "did you mean 'responses'?"),
        ({"responses": {}, "misbehaves": {}}, "$.misbehaves", "did you mean 'misbehave'?"),
        (
            {"responses": {"review": {"dealy_ms": 5}}},
            "$.responses.review",
            "did you mean 'delay_ms'?",
        ),
    ):
        (ws / "bad.json").write_text(json.dumps(body))
        r = mockagent_validate(mockagent_bin, ws / "bad.json")
        assert r.returncode == 2
        assert f"{where}: " in r.stderr and hint in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_a_placeholder_artifact_is_written_and_reported_true(mockagent_bin: str, ws: Path) -> None:
    import hashlib

    a = Agent(mockagent_bin, ws, "-type", "builder", "-script", str(ORIGINAL / "progress.json"))
    a.send(command())
    done = a.events()[-1]
    assert a.proc.stdin is not None and a.proc.stderr is not None
    a.proc.stdin.close()
    assert a.proc.wait(10) == 0
    stderr = a.proc.stderr.read().decode()
    a.close()
    assert [x["path"] for x in done["artifacts"]] == [
        "src/login.py",
        "tests/test_login.py",
        "src/session.py",
    ]
    for art in done["artifacts"]:
        data = (ws / art["path"]).read_bytes()
        assert art["size"] == len(data)
        assert art["sha256"] == "sha256:" + hashlib.sha256(data).hexdigest()
    assert (ws / "src/login.py").stat().st_size == 1024
    assert (ws / "src/session.py").read_bytes() == b""
    assert "src/login.py has no content: wrote 1024 placeholder bytes" in stderr
    # Deterministic: another agent in another workspace writes the same bytes.
    other = ws.parent / "other"
    other.mkdir()
    b = Agent(mockagent_bin, other, "-type", "builder", "-script", str(ORIGINAL / "progress.json"))
    b.send(command())
    assert b.events()[-1]["artifacts"] == done["artifacts"]
    assert b.close() == 0


def test_write_false_sends_the_claim_as_is(mockagent_bin: str, ws: Path) -> None:
    claim = {"path": "nowhere.txt", "sha256": "sha256:" + "0" * 64, "size": 3}
    fx = {
        "responses": {
            "implement": {
                "events": [{"type": "builder.completed", "artifacts": [{**claim, "write": False}]}]
            }
        }
    }
    (ws / "f.json").write_text(json.dumps(fx))
    a = Agent(mockagent_bin, ws, "--type", "builder", "--script", str(ws / "f.json"))
    a.send(command())
    assert a.events()[-1]["artifacts"] == [claim]
    assert a.close() == 0
    assert not (ws / "nowhere.txt").exists()
    fx["responses"]["implement"]["events"][0]["artifacts"][0]["sha256"] = "sha256:abc"
    (ws / "f.json").write_text(json.dumps(fx))
    r = mockagent_validate(mockagent_bin, ws / "f.json")
    assert r.returncode == 2 and '"write": false' in r.stderr


def test_a_replayed_answer_is_addressed_to_the_current_command(
    mockagent_bin: str, ws: Path
) -> None:
    a = Agent(mockagent_bin, ws, "--type", "builder")
    first = command(corr="corr-T-0042-1")
    a.send(first)
    one = a.events()
    again = {**first, "message_id": "cmd-again", "correlation_id": "corr-T-0042-9"}
    a.send(again)
    two = a.events()
    assert a.close() == 0
    assert [e["event"] for e in two] == [e["event"] for e in one]
    for old, new in zip(one, two, strict=True):
        assert new["correlation_id"] == "corr-T-0042-9"
        assert new["message_id"] != old["message_id"]
        assert new["occurred_at"] >= old["occurred_at"]
        assert new.get("artifacts") == old.get("artifacts")
    assert [j["state"] for j in journal(ws, "builder")] == ["started", "completed", "cached"]
