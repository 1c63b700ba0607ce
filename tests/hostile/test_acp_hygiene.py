"""The ACP transport against a hostile agent (issue 21): secrets cut only after
redaction, malformed messages and endless lines ending the attempt at once, a
cap on what one turn records, failed tool calls explained, the test command
bounded and ended with its turn, agent text shown escaped."""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.acp.conftest as acp_conftest
from lorch.agents import procs
from lorch.agents.acp.wire import ACP_LINE_MAX_BYTES
from lorch.agents.transport import Incoming, SendContext
from lorch.app.scenarios import materialize
from lorch.store import ledger
from lorch.wire import protocol, vocabulary
from lorch.wire.errors import AgentError, StorageError

from ..acp.conftest import Harness, command, lines

HOSTILE = Path(__file__).resolve().parent.parent / "agents" / "acp_hostile.py"
SECRET = "Zq7-hostile-acp-Secret-4411xy"  # 29 characters
ESCAPED = 'Qk"quote\\slash-Secret-90210'  # JSON-escaped as Qk\"quote\\slash-...


@pytest.fixture
def acp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    monkeypatch.setattr(acp_conftest, "AGENT", HOSTILE)
    ws = tmp_path / "ws"
    ws.mkdir()
    h = Harness(tmp_path, ws)
    yield h
    for p in h.ports:
        p.kill()
    h.inbox.close()


def pieces(secret: str, shortest: int = 6) -> list[str]:
    """Every piece of ``secret`` at least ``shortest`` characters long."""
    return [secret[i:j] for i in range(len(secret)) for j in range(i + shortest, len(secret) + 1)]


def leaked(text: str, secret: str = SECRET) -> list[str]:
    return [p for p in pieces(secret) if p in text]


def until(h: Harness, done: Any, timeout: float = 30.0) -> list[Incoming]:
    """Items up to and including the first one ``done`` accepts."""
    seen: list[Incoming] = []
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        item = h.inbox.get(0.2)
        if item is None:
            continue
        seen.append(item)
        if done(item):
            return seen
    raise AssertionError(f"not seen in {timeout} s; saw {seen}")


def is_error(item: Incoming) -> bool:
    return item.kind in ("error", "exit") or (
        item.kind == "event"
        and item.message is not None
        and item.message["event"] in vocabulary.TERMINAL_EVENTS
    )


def everything(items: list[Incoming]) -> str:
    return json.dumps([i.message for i in items if i.message is not None]) + "".join(
        str(i.error) + i.reason for i in items
    )


# -- 1. redaction before any cut, on decoded values -------------------------------


def test_a_secret_across_the_message_cut_leaks_no_piece(acp: Harness) -> None:
    # The first chunk ends inside the secret, right where the 4,000-character
    # burst is flushed; a later single chunk holds one across its own 4,000 cut.
    script = acp.script(
        [
            {
                "calls": [
                    [
                        {"text": "a" * 3990 + SECRET[:14]},
                        {"text": SECRET[14:] + " and then"},
                        {"text": "b" * 3985 + SECRET + "c" * 200},
                    ]
                ]
            }
        ]
    )
    port = acp.port(script, secrets=[SECRET])
    items, end = acp.turn(port, command())
    said = lines(items)
    assert any(s.startswith("***") or "***" in s for s in said), said
    assert leaked(everything([*items, end])) == []
    # The agent's log: the chunk with the whole secret redacted, and the secret the
    # agent split across two chunks seen whole there too.
    log = (acp.workspace / "logs/builder/run-1.ndjson").read_text()
    assert "b" * 3985 + "***" + "c" * 200 in log
    assert "*** and then" in log
    assert leaked(log) == []


def test_a_secret_in_the_error_data_cut_leaks_no_piece(acp: Harness) -> None:
    data = {"details": "d" * 280 + SECRET}  # the 300-character cut goes through it
    script = acp.script(
        [{"calls": [[{"raise": {"code": -32603, "message": "boom", "data": data}}]]}]
    )
    port = acp.port(script, secrets=[SECRET])
    items, end = acp.turn(port, command())
    assert end.message is not None and end.message["event"] == "error"
    assert "d" * 200 in end.message["payload"]["message"]
    assert leaked(everything([*items, end])) == []


def test_a_secret_with_quotes_and_backslashes_is_not_logged(acp: Harness) -> None:
    script = acp.script(
        [{"calls": [[{"text": f"the key is {ESCAPED}"}, {"stderr": f"key={ESCAPED}"}]]}]
    )
    port = acp.port(script, secrets=[ESCAPED])
    items, _ = acp.turn(port, command())
    assert "the key is ***" in lines(items)
    log = (acp.workspace / "logs/builder/run-1.ndjson").read_text()
    assert "the key is ***" in log  # the message, redacted where the log holds it
    encoded = json.dumps(ESCAPED)[1:-1]
    assert encoded not in log and ESCAPED not in log
    assert leaked(log, ESCAPED) == [] and leaked(log, encoded) == []


def test_a_secret_in_the_test_output_cuts_leaks_no_piece(acp: Harness) -> None:
    # The summary keeps the last line's first 300 characters, the log the output's
    # last 4,000: both cuts go through the secret.
    (acp.workspace / "out.txt").write_text("y" * 290 + SECRET + "z" * 3990 + "\n")
    script = acp.script([{"calls": [[{"text": "done"}]]}])
    port = acp.port(script, secrets=[SECRET], test_cmd="cat out.txt")
    items, end = acp.turn(port, command())
    assert end.message is not None
    summary = end.message["payload"]["tests"]["summary"]
    assert summary.startswith("cat out.txt: exit 0: " + "y" * 290)
    assert leaked(everything([*items, end])) == []
    log = (acp.workspace / "logs/builder/run-1.ndjson").read_text()
    assert "z" * 3900 in log
    assert leaked(log) == []


def test_a_secret_across_the_pieces_of_a_long_stderr_line_leaks_no_piece(acp: Harness) -> None:
    # stderr is read in 64 KiB pieces: the first one ends inside the secret.
    script = acp.script([{"calls": [[{"stderr": "e" * 65520 + SECRET + "z" * 100}]]}])
    port = acp.port(script, secrets=[SECRET])
    acp.turn(port, command())
    assert port.last_stderr.endswith("***" + "z" * 100)
    log = (acp.workspace / "logs/builder/run-1.ndjson").read_text()
    assert "e" * 65000 in log and "***" + "z" * 100 in log
    assert leaked(log) == []


# -- 2. malformed messages end the attempt at once ------------------------------------

MALFORMED = {
    "batch": ('[{"jsonrpc":"2.0","method":"session/update","params":{}}]', "JSON list"),
    "scalar": ("42", "JSON int"),
    "object-id": ('{"jsonrpc":"2.0","id":{"x":1},"result":{}}', "its id is a JSON object"),
    # lorch's requests: initialize 0, session/new 1, session/prompt 2.
    "string-id": (
        '{"jsonrpc":"2.0","id":"2","result":{"stopReason":"end_turn"}}',
        'an answer to id "2"',
    ),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_message_ends_the_attempt_at_once(acp: Harness, name: str) -> None:
    raw, cause = MALFORMED[name]
    script = acp.script([{"calls": [[{"text": "working"}, {"raw": raw}, {"hang": "forever"}]]}])
    port = acp.port(script)
    assert port.send(command(), b"", SendContext())
    items = until(acp, is_error)
    end = items[-1]
    assert end.kind == "error", items
    reason = str(end.error)
    assert reason.startswith("agent builder sent ") and cause in reason, reason
    assert "working" in lines(items)  # what it said before is kept, in order
    # The engine records it as a protocol error of this attempt: one line.
    error = protocol.ProtocolError(reason, end.raw_size, b"")
    assert "\n" not in error.payload("builder")["reason"]
    assert not port.send(command(), b"", SendContext())


def test_the_sdk_receive_loop_failing_ends_the_attempt_at_once(
    acp: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Whatever else may kill the SDK's receive loop (a bug of its own) is caught too.
    from acp.connection import Connection

    inner = Connection._process_message

    def process(self: Connection, message: dict[str, Any]) -> None:
        if "poison" in json.dumps(message):
            raise RuntimeError("the SDK tripped over \x1b[2J this")
        inner(self, message)

    monkeypatch.setattr(Connection, "_process_message", process)
    script = acp.script([{"calls": [[{"text": "poison"}, {"hang": "forever"}]]}])
    port = acp.port(script)
    assert port.send(command(), b"", SendContext())
    end = until(acp, is_error)[-1]
    assert end.kind == "error"
    assert str(end.error) == (
        "agent builder: the ACP connection failed: RuntimeError: the SDK tripped over \\x1b[2J this"
    )


def test_a_malformed_message_during_initialize_is_the_start_up_failure(acp: Harness) -> None:
    script = acp.script([], initialize_raw='[{"jsonrpc":"2.0","id":0,"result":{}}]')
    with pytest.raises(AgentError) as e:
        acp.port(script)
    assert "agent builder sent a line that is not an ACP message: line is JSON list" in str(e.value)


# -- 3. the line limit -----------------------------------------------------------------


def test_an_endless_line_fails_the_attempt_without_growing_lorch(acp: Harness) -> None:
    script = acp.script([{"calls": [[{"endless_line_mb": 300}]]}])
    port = acp.port(script)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    assert port.send(command(), b"", SendContext())
    items = until(acp, is_error)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    end = items[-1]
    assert end.kind == "error", items
    reason = str(end.error)
    assert "agent builder" in reason, reason
    assert f"{ACP_LINE_MAX_BYTES}-byte line limit of the ACP transport" in reason, reason
    assert grown < 64 * 1024, f"lorch grew by {grown} KiB"


def test_a_message_past_the_protocols_limit_but_inside_the_acps_is_taken(acp: Harness) -> None:
    # A real agent's tool call may carry a whole file (1 MiB here): the turn goes on.
    big = "y" * (1 << 20)
    script = acp.script([{"calls": [[{"failed_tool": "Writing big.txt", "content": big}]]}])
    port = acp.port(script)
    items, end = acp.turn(port, command())
    assert end.kind == "event" and end.message is not None, (items, end)
    assert end.message["event"] == "builder.completed", end.message
    said = lines(items)
    assert any(x.startswith("tool edit: Writing big.txt [failed]: yyy") for x in said), said


def test_a_turn_end_past_the_line_limit_fails_the_attempt(acp: Harness) -> None:
    # 4,000 changed files: the builder.completed lorch builds would be ~350 KB.
    script = acp.script([{"calls": [[{"many_files": 4000}]]}])
    port = acp.port(script)
    assert port.send(command(), b"", SendContext())
    items = until(acp, is_error, timeout=120)
    end = items[-1]
    assert end.kind == "error", items
    reason = str(end.error)
    assert reason.startswith("agent builder: its builder.completed event would be "), reason
    assert "262144-byte line limit ($.policy.message_max_bytes)" in reason


# -- 4. a cap on what one turn records ---------------------------------------------------


def test_a_flood_of_updates_stops_at_the_cap(acp: Harness) -> None:
    script = acp.script([{"calls": [[{"tool_calls": 500}, {"hang": "forever"}]]}])
    port = acp.port(script, max_updates_per_turn=20)
    assert port.send(command(), b"", SendContext())
    items = until(acp, is_error)
    end = items[-1]
    assert end.kind == "error", items
    assert "max_updates_per_turn" in str(end.error) and "agent builder" in str(end.error)
    assert len(lines(items)) == 20
    # Nothing more of that turn is recorded; the engine kills the agent.
    port.kill()
    rest = until(acp, lambda i: i.kind == "exit")
    assert lines(rest) == []


# -- 5. a failed tool call says why ---------------------------------------------------------


def test_a_failed_tool_call_shows_the_tools_own_error(acp: Harness) -> None:
    script = acp.script(
        [
            {
                "calls": [
                    [
                        {
                            "failed_tool": "Writing to hello.py",
                            "content": "Error checking existing file: Resource not found\n"
                            f"\x1b[2J key {SECRET}",
                        },
                        {"failed_tool": "Run tests", "raw_output": {"error": "exit status 2"}},
                    ]
                ]
            }
        ]
    )
    port = acp.port(script, secrets=[SECRET])
    items, _ = acp.turn(port, command())
    said = lines(items)
    assert (
        "tool edit: Writing to hello.py [failed]: Error checking existing file: "
        "Resource not found \\x1b[2J key ***"
    ) in said, said
    assert "tool edit: Run tests [failed]: exit status 2" in said
    assert leaked(everything(items)) == []


# -- 6. the test command: a timeout, and ended with its turn -----------------------------------


def _gone(pid: int) -> bool:
    end = time.monotonic() + 10
    while time.monotonic() < end:
        if not procs.group_alive(pid, os.getpgid(pid) if _exists(pid) else pid):
            return True
        time.sleep(0.05)
    return False


def _exists(pid: int) -> bool:
    try:
        os.getpgid(pid)
    except ProcessLookupError:
        return False
    return not procs.is_zombie(pid)


def test_the_test_command_times_out_with_its_whole_group(acp: Harness) -> None:
    script = acp.script([{"calls": [[{"text": "done"}]]}])
    cmd = "sleep 300 & echo $! > bg.pid; echo started; sleep 300"
    port = acp.port(script, test_cmd=cmd, test_timeout_s=1)
    _, end = acp.turn(port, command())
    assert end.message is not None and end.message["event"] == "builder.completed"
    tests = end.message["payload"]["tests"]
    assert tests["status"] == "fail"
    assert "timed out after 1 s ($.agents.builder.test_timeout_s)" in tests["summary"]
    assert tests["summary"].endswith(": started")
    bg = int((acp.workspace / "bg.pid").read_text())
    assert _gone(bg)


def test_an_abandoned_turn_ends_its_test_command(acp: Harness) -> None:
    script = acp.script([{"calls": [[{"text": "done"}]]}])
    port = acp.port(script, test_cmd="echo $$ > t.pid; sleep 300")
    assert port.send(command(), b"", SendContext())
    pid_file = acp.workspace / "t.pid"
    end = time.monotonic() + 30
    while not (pid_file.exists() and pid_file.read_text().strip()) and time.monotonic() < end:
        time.sleep(0.05)
    pid = int(pid_file.read_text())
    assert _exists(pid)
    port.kill()
    assert _gone(pid)


# -- 7. agent text reaches the terminal escaped -------------------------------------------------


def test_an_initialize_error_is_shown_escaped(acp: Harness) -> None:
    script = acp.script(
        [], initialize_error={"code": -32603, "message": "no\x1b]0;pwned\x07\r[lorch] DONE"}
    )
    with pytest.raises(AgentError) as e:
        acp.port(script)
    text = str(e.value)
    assert "\\x1b]0;pwned\\x07\\x0d[lorch] DONE" in text
    assert not any(c in text for c in "\x1b\x07\r")


def test_an_error_message_and_stderr_are_shown_escaped(acp: Harness) -> None:
    shown: list[str] = []
    script = acp.script(
        [
            {
                "calls": [
                    [
                        {"stderr": "err \x1b[2J\r\u202eevil"},
                        {"raise": {"code": -32603, "message": "bad \x1b[31m\x9b1m"}},
                    ]
                ]
            }
        ]
    )
    port = acp.port(script)
    port.launch = dataclasses.replace(port.launch, on_stderr=shown.append)
    _, end = acp.turn(port, command())
    assert end.message is not None
    message = end.message["payload"]["message"]
    assert "bad \\x1b[31m\\x9b1m" in message and "\x1b" not in message
    assert port.last_stderr == "err \\x1b[2J\\x0d\\u202eevil"
    assert shown == ["[builder stderr] err \\x1b[2J\\x0d\\u202eevil"]


# -- the role settings, through a whole run ------------------------------------------------------


def _run_ws(tmp_path: Path, builder: dict[str, Any], test_cmd: Any = None) -> Path:
    ws = tmp_path / "run"
    materialize("acp-exactly-once", ws)
    cfg = json.loads((ws / "lorch.json").read_text())
    # No sandbox: the test command's pids are seen from here (a sandbox has its own).
    cfg["agents"]["builder"].update({"sandbox": "none", **builder})
    if test_cmd is not None:
        cfg["task"]["test_cmd"] = test_cmd
    cfg["policy"]["max_attempts"] = 2
    (ws / "lorch.json").write_text(json.dumps(cfg))
    return ws


def _records(ws: Path) -> list[dict[str, Any]]:
    (path,) = sorted((ws / "events").glob("run-*.ndjson"))
    return list(ledger.read(path))


@pytest.mark.e2e
def test_a_run_applies_the_test_timeout_setting(tmp_path: Path, lorch) -> None:  # type: ignore[no-untyped-def]
    ws = _run_ws(tmp_path, {"test_timeout_s": 1}, "echo $$ > t.pid; sleep 300")
    r = lorch("run", "--workspace", str(ws), timeout=300)
    assert "Traceback" not in r.stdout + r.stderr
    summaries = [
        x["payload"]["tests"]["summary"]
        for x in _records(ws)
        if x.get("event") == "builder.completed"
    ]
    assert summaries and all(
        "timed out after 1 s ($.agents.builder.test_timeout_s)" in s for s in summaries
    ), summaries
    assert _gone(int((ws / "t.pid").read_text()))


@pytest.mark.e2e
def test_a_run_applies_the_updates_cap(tmp_path: Path, lorch) -> None:  # type: ignore[no-untyped-def]
    ws = _run_ws(tmp_path, {"max_updates_per_turn": 1})
    r = lorch("run", "--workspace", str(ws), timeout=300)
    assert r.returncode != 0 and "Traceback" not in r.stdout + r.stderr
    records = _records(ws)
    reasons = [x["payload"]["reason"] for x in records if x.get("event") == "system.protocol_error"]
    assert reasons and all(
        x == "agent builder sent more than 1 session updates in one turn "
        "(the limit $.agents.builder.max_updates_per_turn)"
        for x in reasons
    ), reasons
    logs = [x for x in records if x.get("event") == "log" and x["from"]["agent_type"] == "builder"]
    assert len(logs) <= len(reasons)  # at most one line per turn
    assert "max_updates_per_turn" in r.stdout + r.stderr


@pytest.mark.e2e
def test_an_interrupted_lorch_ends_the_test_command(
    tmp_path: Path, lorch_bin: str, clean_env: dict[str, str]
) -> None:
    ws = _run_ws(tmp_path, {}, "echo $$ > t.pid; sleep 300")
    proc = subprocess.Popen(
        [lorch_bin, "run", "--workspace", str(ws)],
        env=clean_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        pid_file = ws / "t.pid"
        end = time.monotonic() + 120
        while not (pid_file.exists() and pid_file.read_text().strip()):
            assert proc.poll() is None and time.monotonic() < end, "the test command never ran"
            time.sleep(0.05)
        pid = int(pid_file.read_text())
        assert _exists(pid)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: lorch stops its agents and exits
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "interrupted" in out and "Traceback" not in out, out
    assert _gone(pid)


def test_an_agent_log_replaced_by_a_symlink_is_never_written_through(
    acp: Harness, tmp_path: Path
) -> None:
    # An agent replaced its log with a symlink: the next start must not append
    # agent-controlled lines to the file outside, nor change its mode.
    victim = tmp_path / "victim.txt"
    victim.write_text("user data\n")
    victim.chmod(0o640)
    log = acp.workspace / "logs" / "builder" / "run-1.ndjson"
    log.parent.mkdir(parents=True)
    log.symlink_to(victim)
    with pytest.raises(StorageError, match="symlink"):
        acp.port(acp.script([{"calls": [[]]}]))
    assert victim.read_text() == "user data\n"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o640
