"""mockagent as a subprocess: fixtures, faults, idempotency, journal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lorch.wire import protocol, vocabulary
from lorch.wire.resources import scenarios_dir

from .driver import Agent, command, journal, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    d = tmp_path / "ws"
    d.mkdir()
    return d


def fixture(ws: Path, body: dict[str, Any]) -> str:
    p = ws / "fixture.json"
    p.write_text(json.dumps(body))
    return str(p)


def test_default_agents_answer_every_role_validly(mockagent_bin: str, ws: Path) -> None:
    cases = [
        ("builder", "implement", "builder.completed"),
        ("reviewer", "review", "review.completed"),
        ("spec_maintainer", "update_spec", "spec.updated"),
        ("orchestration", "intake", "orchestration.proposed_tasks"),
    ]
    found = {"candidates": [{"path": "PLAN.md", "score": 50, "headings": []}]}
    for role, action, terminal in cases:
        a = Agent(mockagent_bin, ws, "--type", role)
        inputs = {"round": 1, "discovery_metadata": found} if role == "orchestration" else None
        a.send(command(action, role=role, inputs=inputs))
        evs = a.events()
        assert a.close() == 0
        for line in a.lines:
            protocol.decode(line)  # every line it printed is schema-valid
        assert evs[-1]["event"] == terminal
        for art in evs[-1].get("artifacts", []):
            data = (ws / art["path"]).read_bytes()
            assert art["size"] == len(data)


def test_heartbeats_seq_and_status(mockagent_bin: str, ws: Path) -> None:
    fx = {
        "responses": {
            "implement": {
                "delay_ms": 300,
                "events": [{"type": "builder.completed", "payload": {"tests": {"status": "pass"}}}],
            }
        }
    }
    a = Agent(
        mockagent_bin,
        ws,
        "--type",
        "builder",
        "--heartbeat-interval",
        "0.05",
        "--script",
        fixture(ws, fx),
    )
    a.send(command())
    a.events()
    a.close()
    hbs = [json.loads(x) for x in a.lines if b'"heartbeat"' in x]
    assert [h["seq"] for h in hbs] == list(range(len(hbs)))
    statuses = [h["status"] for h in hbs]
    assert statuses[0] == "starting" and statuses[-1] == "stopping"
    assert statuses.count("busy") >= 3  # heartbeats continue during the delay
    assert all(h["pid"] == a.proc.pid for h in hbs)


def test_original_format_fixture_unchanged(mockagent_bin: str, ws: Path) -> None:
    fx = {
        "responses": {
            "review": {
                "delay_ms": 0,
                "events": [
                    {
                        "type": "review.completed",
                        "status": "changes_requested",
                        "payload": {"review_path": "reviews/T-0042.json"},
                    }
                ],
            },
            "implement": {"error": "build_broken"},
        }
    }
    a = Agent(mockagent_bin, ws, "--type", "reviewer", "--script", fixture(ws, fx))
    a.send(command("review", role="reviewer"))
    assert a.events()[-1]["status"] == "changes_requested"
    a.send(command("implement", corr="c2"))
    err = a.events()[-1]
    assert err["event"] == "error" and err["payload"]["code"] == "build_broken"
    a.close()


def test_sequence_then_repeat_last_survives_restart(mockagent_bin: str, ws: Path) -> None:
    def review(status: str) -> dict[str, Any]:
        return {"events": [{"type": "review.completed", "status": status}]}

    fx = fixture(ws, {"responses": {"review": [review("changes_requested"), review("approved")]}})
    a = Agent(mockagent_bin, ws, "--type", "reviewer", "--script", fx)
    a.send(command("review", role="reviewer", inputs={"round": 1}))
    assert a.events()[-1]["status"] == "changes_requested"
    a.close()
    b = Agent(mockagent_bin, ws, "--type", "reviewer", "--script", fx)
    b.send(command("review", role="reviewer", inputs={"round": 2}))
    assert b.events()[-1]["status"] == "approved"
    b.send(command("review", role="reviewer", inputs={"round": 3}))
    assert b.events()[-1]["status"] == "approved"
    b.close()


def test_cycle_matching_and_templates(mockagent_bin: str, ws: Path) -> None:
    fx = {
        "match": [
            {
                "when": {"task_id": "T-9"},
                "response": {
                    "events": [{"type": "review.completed", "status": "special-{task_id}-{round}"}]
                },
            }
        ],
        "responses": {
            "review": {
                "sequence": [
                    {
                        "events": [
                            {
                                "type": "review.completed",
                                "status": "a",
                                "payload": {"ik": "{ik}", "call": "{call}", "n": "{counter}"},
                            }
                        ]
                    },
                    {"events": [{"type": "review.completed", "status": "b"}]},
                ],
                "after": "cycle",
            }
        },
    }
    a = Agent(mockagent_bin, ws, "--type", "reviewer", "--script", fixture(ws, fx))
    got = []
    for r in range(1, 4):
        c = command("review", role="reviewer", inputs={"round": r})
        a.send(c)
        ev = a.events()[-1]
        got.append(ev["status"])
        if r == 1:
            assert ev["payload"] == {"ik": c["idempotency_key"], "call": "1", "n": "1"}
    a.send(command("review", role="reviewer", task="T-9", inputs={"round": 7}))
    assert a.events()[-1]["status"] == "special-T-9-7"
    a.close()
    assert got == ["a", "b", "a"]


def test_real_files_with_true_checksums(mockagent_bin: str, ws: Path) -> None:
    (ws / "content.txt").write_text("from a file\n")
    fx = {
        "responses": {
            "implement": {
                "files": [
                    {"path": "src/{task_id}.py", "content": "x = 1\n"},
                    {"path": "src/other.txt", "content_file": "content.txt"},
                ],
                "events": [{"type": "builder.completed", "payload": {"tests": {"status": "pass"}}}],
            }
        }
    }
    a = Agent(mockagent_bin, ws, "--type", "builder", "--script", fixture(ws, fx))
    a.send(command())
    evs = a.events()
    a.close()
    arts = evs[-1]["artifacts"]
    from lorch.wire.checksum import sha256_file

    for art in arts:
        assert (art["sha256"], art["size"]) == sha256_file(ws / art["path"])
    assert (ws / "src/T-0042.py").read_text() == "x = 1\n"
    assert [e["event"] for e in evs] == [
        "artifact.produced",
        "artifact.produced",
        "builder.completed",
    ]


def fingerprint(ws: Path) -> dict[str, tuple[int, int, int]]:
    out = {}
    for p in ws.rglob("*"):
        if p.is_file() and ".mockagent" not in p.parts:
            st = p.stat()
            out[str(p.relative_to(ws))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def test_repeated_key_answered_from_cache_without_touching_files(
    mockagent_bin: str, ws: Path
) -> None:
    a = Agent(mockagent_bin, ws, "--type", "builder")
    c = command()
    a.send(c)
    first = a.events()[-1]
    before = fingerprint(ws)
    a.send({**c, "message_id": "cmd-again", "retry": {"attempt": 1, "max_attempts": 3}})
    again = a.events()[-1]
    a.close()
    assert again["artifacts"] == first["artifacts"] and again["event"] == first["event"]
    assert fingerprint(ws) == before
    # and across a restart
    b = Agent(mockagent_bin, ws, "--type", "builder")
    b.send(c)
    assert b.events()[-1]["artifacts"] == first["artifacts"]
    b.close()
    assert fingerprint(ws) == before
    states = [e["state"] for e in journal(ws)]
    assert states == ["started", "completed", "cached", "cached"]


def journal_lines(ws: Path, role: str = "builder") -> list[dict[str, Any]]:
    """Every parseable journal line (a torn one is skipped, as mockagent does)."""
    out = []
    for raw in (ws / ".mockagent" / role / "journal.ndjson").read_bytes().splitlines():
        try:
            out.append(json.loads(raw))
        except ValueError:
            continue
    return out


def test_the_journal_is_the_cache_across_restarts_and_torn_lines(
    mockagent_bin: str, ws: Path
) -> None:
    a = Agent(mockagent_bin, ws, "--type", "builder")
    c = command()
    a.send(c)
    first = a.events()
    a.close()
    state = ws / ".mockagent" / "builder"
    assert not (state / "cache").exists()
    done = [e for e in journal(ws) if e["state"] == "completed"]
    assert len(done) == 1 and done[0]["events"][-1]["event"] == "builder.completed"
    before = fingerprint(ws)
    # A crash mid-append leaves a torn last line: it is ignored, not fatal.
    with open(state / "journal.ndjson", "ab") as f:
        f.write(b'{"ik":"ik:' + b"0" * 20)
    b = Agent(mockagent_bin, ws, "--type", "builder")
    b.send({**c, "message_id": "cmd-again", "retry": {"attempt": 1, "max_attempts": 3}})
    again = b.events()
    b.send({**c, "inputs": {"round": 99}})
    conflict = b.events()[-1]
    b.send(command(task="T-7", corr="c2"))  # a new key is really worked on
    assert b.events()[-1]["event"] == "builder.completed"
    b.close()
    assert [e["event"] for e in again] == [e["event"] for e in first]
    assert again[-1]["artifacts"] == first[-1]["artifacts"]
    assert conflict["payload"]["code"] == "idempotency_conflict"
    assert {k: v for k, v in fingerprint(ws).items() if k in before} == before
    states = [e["state"] for e in journal_lines(ws)]
    assert states == ["started", "completed", "cached", "started", "completed"]
    # the torn bytes stay a line of their own: every later line is whole
    raw = (state / "journal.ndjson").read_bytes().splitlines()
    assert raw[2] == b'{"ik":"ik:' + b"0" * 20 and len(raw) == 6


def test_agents_sharing_a_state_dir_see_each_others_answers(mockagent_bin: str, ws: Path) -> None:
    a = Agent(mockagent_bin, ws, "--type", "builder")
    b = Agent(mockagent_bin, ws, "--type", "builder")
    assert a.raw_line() is not None and b.raw_line() is not None  # both started
    wait_for(lambda: (ws / ".mockagent" / "builder" / "locks").is_dir())
    c = command()
    a.send(c)
    first = a.events()
    before = fingerprint(ws)
    b.send(c)  # b read the journal before a answered: it must look again
    again = b.events()
    a.close()
    b.close()
    assert [e["event"] for e in again] == [e["event"] for e in first]
    assert again[-1]["artifacts"] == first[-1]["artifacts"]
    assert fingerprint(ws) == before
    assert [e["state"] for e in journal(ws)] == ["started", "completed", "cached"]


def test_answers_cached_by_the_old_cache_dir_are_still_used(mockagent_bin: str, ws: Path) -> None:
    import hashlib

    c = command()
    ik = c["idempotency_key"]
    key = [c["action"], c["task_id"], c["inputs"], c["version"]]
    digest = hashlib.sha256(
        json.dumps(key, sort_keys=True, separators=(",", ":")).encode()
    ).hexdigest()
    answer = {"kind": "event", "event": "builder.completed", "payload": {"old": True}}
    state = ws / ".mockagent" / "builder"
    (state / "cache").mkdir(parents=True)
    (state / "cache" / f"{ik.removeprefix('ik:')}.json").write_text(
        json.dumps({"digest": digest, "events": [answer]})
    )
    line = {"ik": ik, "action": "implement", "task_id": "T-0042", "attempt": 0, "pid": 1}
    (state / "journal.ndjson").write_text(
        "".join(json.dumps({**line, "state": s}) + "\n" for s in ("started", "completed"))
    )
    a = Agent(mockagent_bin, ws, "--type", "builder")
    a.send(c)
    got = a.events()
    a.close()
    assert [e.get("payload") for e in got] == [{"old": True}]
    assert not (ws / "src").exists()


def test_same_key_different_inputs_is_a_conflict(mockagent_bin: str, ws: Path) -> None:
    a = Agent(mockagent_bin, ws, "--type", "builder")
    c = command()
    a.send(c)
    a.events()
    a.send({**c, "inputs": {"round": 99}})
    err = a.events()[-1]
    a.close()
    assert err["event"] == "error" and err["payload"]["code"] == "idempotency_conflict"


def test_killed_mid_work_then_resent_completes_exactly_once(mockagent_bin: str, ws: Path) -> None:
    fx = fixture(
        ws,
        {
            "responses": {
                "implement": {
                    "delay_ms": 60000,
                    "files": [{"path": "src/a.py", "content": "a\n"}],
                    "events": [
                        {"type": "builder.completed", "payload": {"tests": {"status": "pass"}}}
                    ],
                }
            }
        },
    )
    a = Agent(mockagent_bin, ws, "--type", "builder", "--script", fx)
    c = command()
    a.send(c)
    wait_for(lambda: any(e["state"] == "started" for e in journal(ws)))
    os.killpg(a.proc.pid, signal.SIGKILL)
    a.close()
    fast = json.loads(Path(fx).read_text())
    fast["responses"]["implement"]["delay_ms"] = 0
    Path(fx).write_text(json.dumps(fast))
    b = Agent(mockagent_bin, ws, "--type", "builder", "--script", fx)
    b.send({**c, "retry": {"attempt": 1, "max_attempts": 3}})
    assert b.events()[-1]["event"] == "builder.completed"
    b.send(c)
    b.events()
    b.close()
    states = [e["state"] for e in journal(ws)]
    assert states == ["started", "interrupted", "started", "completed", "cached"]
    assert (ws / "src/a.py").read_text() == "a\n"


@pytest.mark.parametrize(
    ("line", "code"),
    [
        (b"{not json\n", "bad_json"),
        (b'{"kind":"command"}\n', "schema_violation"),
        (
            b'{"kind":"command","correlation_id":"c","task_id":"T-1","idempotency_key":"ik:x","action":"dance"}\n',
            "unknown_action",
        ),
        (b"x" * 300_000 + b"\n", "line_too_long"),
    ],
)
def test_bad_input_gets_an_error_event_and_agent_keeps_serving(
    mockagent_bin: str, ws: Path, line: bytes, code: str
) -> None:
    a = Agent(mockagent_bin, ws, "--type", "builder")
    a.send(line)
    assert a.events()[-1]["payload"]["code"] == code
    a.send(command())
    assert a.events()[-1]["event"] == "builder.completed"
    a.close()


def test_version_mismatch(mockagent_bin: str, ws: Path) -> None:
    a = Agent(
        mockagent_bin, ws, "--type", "builder", env={"LORCH_SNAPSHOT_ID": "snap-aaaaaaaaaaaa"}
    )
    a.send(command())
    err = a.events()[-1]
    a.close()
    assert err["payload"]["code"] == "version_mismatch"
    b = Agent(
        mockagent_bin,
        ws,
        "--type",
        "builder",
        "--script",
        fixture(ws, {"misbehave": {"ignore_version": True}}),
        env={"LORCH_SNAPSHOT_ID": "snap-aaaaaaaaaaaa"},
    )
    b.send(command())
    assert b.events()[-1]["event"] == "builder.completed"
    b.close()


@pytest.mark.parametrize(
    ("fault", "check"),
    [
        ({"kind": "exit", "code": 7}, "exit7"),
        ({"kind": "garbage"}, "garbage"),
        ({"kind": "oversized"}, "oversized"),
        ({"kind": "half_line"}, "half"),
        ({"kind": "wrong_task"}, "wrong_task"),
        ({"kind": "wrong_correlation"}, "wrong_corr"),
    ],
)
def test_faults(mockagent_bin: str, ws: Path, fault: dict[str, Any], check: str) -> None:
    fx = {
        "responses": {
            "implement": {
                "fault": fault,
                "events": [{"type": "builder.completed", "payload": {"tests": {"status": "pass"}}}],
            }
        }
    }
    a = Agent(mockagent_bin, ws, "--type", "builder", "--script", fixture(ws, fx))
    a.send(command())
    out = []
    while (line := a.raw_line(5)) is not None:
        out.append(line)
        if b"builder.completed" in line:
            break
    rc = a.close()
    if check == "exit7":
        assert rc == 7
    elif check == "garbage":
        assert b"this is not json {{{" in out
    elif check == "oversized":
        assert any(len(x) > vocabulary.MAX_LINE for x in out)
    elif check == "half":
        assert a.buf.startswith(b'{"kind":"event"') and rc == 1
    elif check == "wrong_task":
        assert any(b'"T-9999"' in x for x in out)
    else:
        assert any(b"corr-wrong" in x for x in out)


def test_fault_only_on_first_attempt_and_probability_zero(mockagent_bin: str, ws: Path) -> None:
    fx = {
        "responses": {
            "implement": {
                "fault": {"kind": "exit", "code": 5, "attempt": 0},
                "events": [{"type": "builder.completed", "payload": {"tests": {"status": "pass"}}}],
            }
        }
    }
    a = Agent(mockagent_bin, ws, "--type", "builder", "--script", fixture(ws, fx))
    a.send(command())
    assert a.raw_line(5) is not None
    assert a.close() == 5
    b = Agent(mockagent_bin, ws, "--type", "builder", "--script", fixture(ws, fx))
    b.send(command(attempt=1))
    assert b.events()[-1]["event"] == "builder.completed"
    b.close()
    never = {
        "responses": {
            "implement": {
                "fault": {"kind": "exit", "probability": 0},
                "events": [{"type": "builder.completed", "payload": {"tests": {"status": "pass"}}}],
            }
        }
    }
    c = Agent(mockagent_bin, ws, "--type", "builder", "--script", fixture(ws, never))
    for r in range(20):
        c.send(command(inputs={"round": r}, corr=f"c{r}"))
        assert c.events()[-1]["event"] == "builder.completed"
    assert c.close() == 0


def test_misbehaviour_redo_and_correlation(mockagent_bin: str, ws: Path) -> None:
    a = Agent(
        mockagent_bin,
        ws,
        "--type",
        "builder",
        "--script",
        fixture(ws, {"misbehave": {"redo_on_repeat": True, "correlation_id": "change"}}),
    )
    c = command()
    a.send(c)
    first = a.events()[-1]
    a.send(c)
    a.events()
    a.close()
    assert first["correlation_id"] != c["correlation_id"]
    assert [e["state"] for e in journal(ws)].count("completed") == 2


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"responses": {"implement": {"delay": 5}}}, "$.responses.implement"),
        ({"responses": {"dance": {}}}, "$.responses"),
        (
            {"responses": {"review": {"events": [{"type": "review.finished"}]}}},
            "$.responses.review",
        ),
        (
            {"responses": {"implement": {"files": [{"path": "a", "content_file": "missing.txt"}]}}},
            "content_file",
        ),
        ({"misbehave": {"redo": True}}, "$.misbehave"),
    ],
)
def test_bad_fixtures_rejected_before_start(
    mockagent_bin: str, ws: Path, body: dict[str, Any], path: str
) -> None:
    fx = fixture(ws, body)
    for args in (["validate", fx], ["--type", "builder", "--script", fx]):
        r = subprocess.run(
            [mockagent_bin, *args], capture_output=True, text=True, input="", timeout=10
        )
        assert r.returncode == 2, (args, r.stderr)
        assert fx in r.stderr and path in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_every_bundled_fixture_validates(mockagent_bin: str) -> None:
    fixtures = sorted(scenarios_dir().glob("*/fixtures/*.json"))
    assert len(fixtures) >= 24
    for fx in fixtures:
        r = subprocess.run(
            [mockagent_bin, "validate", str(fx)], capture_output=True, text=True, timeout=10
        )
        assert r.returncode == 0, r.stderr


def test_sigterm_and_eof_end_it_promptly(mockagent_bin: str, ws: Path) -> None:
    a = Agent(mockagent_bin, ws, "--type", "builder")
    a.raw_line()
    a.proc.send_signal(signal.SIGTERM)
    assert a.proc.wait(5) == 0
    a.close()
    b = Agent(mockagent_bin, ws, "--type", "builder")
    assert b.close() == 0


def test_random_delays_are_reproducible_from_the_seed(mockagent_bin: str, ws: Path) -> None:
    logs: list[list[str]] = []
    for seed in ("7", "7", "8"):
        state = ws / f"s{len(logs)}"
        fx = {
            "responses": {
                "implement": {
                    "delay_ms": {"uniform": [0, 3]},
                    "events": [
                        {
                            "type": "builder.completed",
                            "delay_ms": {"lognormal": {"mu": 0, "sigma": 1, "cap_ms": 2}},
                            "payload": {"tests": {"status": "pass"}},
                        }
                    ],
                }
            }
        }
        r = subprocess.run(
            [
                mockagent_bin,
                "--type",
                "builder",
                "--seed",
                seed,
                "--state-dir",
                str(state),
                "--no-heartbeat",
                "--workspace",
                str(ws),
                "--script",
                fixture(ws, fx),
            ],
            input=b"".join(
                json.dumps(command(inputs={"round": i}, corr=f"c{i}")).encode() + b"\n"
                for i in range(3)
            ),
            capture_output=True,
            timeout=20,
        )
        assert r.returncode == 0
        logs.append([ln for ln in r.stderr.decode().splitlines() if "random delay" in ln])
    assert len(logs[0]) == 6
    assert logs[0] == logs[1] and logs[0] != logs[2]


def test_dribbled_lines_arrive_whole(mockagent_bin: str, ws: Path) -> None:
    fx = {
        "responses": {
            "implement": {
                "dribble": {"chunk": 5, "gap_ms": 1},
                "events": [
                    {"type": "builder.progress", "payload": {"message": "x" * 200}},
                    {"type": "builder.completed", "payload": {"tests": {"status": "pass"}}},
                ],
            }
        }
    }
    a = Agent(
        mockagent_bin,
        ws,
        "--type",
        "builder",
        "--heartbeat-interval",
        "0.01",
        "--script",
        fixture(ws, fx),
    )
    a.send(command())
    evs = a.events()
    a.close()
    assert [e["event"] for e in evs] == ["builder.progress", "builder.completed"]
    for line in a.lines:
        protocol.decode(line)  # heartbeats never land inside a dribbled line


def test_record_then_replay(mockagent_bin: str, ws: Path, tmp_path: Path) -> None:
    out = tmp_path / "recorded.json"
    rec = subprocess.Popen(
        [
            mockagent_bin,
            "record",
            "--out",
            str(out),
            "--",
            mockagent_bin,
            "--type",
            "reviewer",
            "--review-changes-count",
            "1",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=ws,
        env={**os.environ, "LORCH_WORKSPACE": str(ws)},
    )
    stdin = b"".join(
        json.dumps(command("review", role="reviewer", inputs={"round": r}, corr=f"c{r}")).encode()
        + b"\n"
        for r in (1, 2)
    )
    stdout, _ = rec.communicate(stdin, timeout=20)
    assert rec.returncode == 0
    assert stdout.count(b"review.completed") == 2  # passed through
    body = json.loads(out.read_text())
    seq = body["responses"]["review"]
    assert [r["events"][-1]["status"] for r in seq] == ["changes_requested", "approved"]
    assert seq[0]["files"][0]["path"] == "reviews/T-0042.json"
    check = subprocess.run([mockagent_bin, "validate", str(out)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    b = Agent(mockagent_bin, tmp_path, "--type", "reviewer", "--script", str(out))
    statuses = []
    for r in (1, 2):
        b.send(command("review", role="reviewer", inputs={"round": r}, corr=f"c{r}"))
        statuses.append(b.events()[-1]["status"])
    b.close()
    assert statuses == ["changes_requested", "approved"]


def test_fault_only_on_the_nth_call(mockagent_bin: str, ws: Path) -> None:
    fx = {
        "responses": {
            "implement": {
                "fault": {"kind": "garbage", "call": 2},
                "events": [{"type": "builder.completed", "payload": {"tests": {"status": "pass"}}}],
            }
        }
    }
    a = Agent(mockagent_bin, ws, "--type", "builder", "--no-heartbeat", "--script", fixture(ws, fx))
    for r in (1, 2, 3):
        a.send(command(inputs={"round": r}, corr=f"c{r}"))
        while (line := a.raw_line(5)) is not None and b"builder.completed" not in line:
            pass
    a.close()
    garbage = [i for i, line in enumerate(a.lines) if line == b"this is not json {{{"]
    assert len(garbage) == 1
    # it came with the second command's answer, not the first or third
    completed = [i for i, line in enumerate(a.lines) if b"builder.completed" in line]
    assert completed[0] < garbage[0] < completed[1]
