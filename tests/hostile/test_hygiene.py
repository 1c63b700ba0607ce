"""Issue 21's hygiene defects, each by a real agent process (or a real file) against the real lorch.

- What an agent says reaches the terminal escaped: no escape sequence, ``\\r``
  or bidi override is obeyed, and no line it writes looks like one of lorch's.
- A workspace file lorch reads back (``state/index.json``, receipts,
  ``state/run.json``) may hold anything: lorch rebuilds it or names it in one line.
- A ``builder.completed`` without a test status is a protocol error of its attempt.
- What an agent starts ends with it, even out of its process group
  (``setsid``); its pipe is not read from its grandchildren once it has exited.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import examples

from .conftest import (
    Workspace,
    assert_clean_exit,
    protocol_errors,
    records,
    run_ids,
    terminal_events,
)

pytestmark = pytest.mark.e2e

HAPPY = ["builder.completed", "review.completed:approved", "spec.no_changes_needed"]
# A terminal obeys these; shown escaped they are harmless (C0 but \n and \t, C1, bidi).
OBEYED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _lines_of_lorch(text: str) -> list[str]:
    return [line for line in text.split("\n") if line.startswith(("[lorch]", "lorch:"))]


def test_an_agent_cannot_drive_the_terminal_or_forge_a_line(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = hostile_ws({"builder": "terminal_escapes"})
    r = lorch("run", "-v", "--workspace", str(ws))
    assert_clean_exit(r)
    assert terminal_events(ws) == ["error", *HAPPY]
    for stream in (r.stdout, r.stderr):
        assert not OBEYED.search(stream), repr(OBEYED.search(stream))
    # Its progress, its error and its stderr (-v) were shown, escaped, on lines of their own.
    out = r.stdout
    assert "[builder] builder.progress done\\x0d[lorch] DONE\\x1b[2J\\x1b]0;pwned\\x07" in out
    assert "[builder] error crashed: done [lorch] DONE\\x1b[2J\\x1b]0;pwned" in out
    assert "[builder stderr] warming up\\x1b]0;title\\x07\\x0d[lorch] DONE\\x1b[H" in out
    assert "\\u202etxt.exe" in out
    # Its newline starts an indented line, never one of lorch's: one DONE, lorch's, last.
    assert "\n    [lorch] DONE\n" in out
    assert [line for line in out.split("\n") if "DONE" in line and line.startswith("[lorch]")] == [
        "[lorch] DONE"
    ]
    assert out.rstrip("\n").endswith("\n[lorch] DONE")
    # The transcript file says the same.
    (transcript,) = (ws / "transcripts").glob("run-*.txt")
    assert transcript.read_text() == "".join(
        line + "\n" for line in out.split("\n") if line and "stderr]" not in line
    )


def test_an_agent_s_auth_message_is_shown_escaped_in_lorch_s_last_line(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = hostile_ws({"builder": "auth_escapes"})
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    assert not OBEYED.search(r.stderr) and not OBEYED.search(r.stdout)
    (last,) = _lines_of_lorch(r.stderr)
    assert last.startswith("lorch: ") and "\\x1b]0;pwned\\x07" in last
    assert "\n    [lorch] DONE" in r.stderr


def test_doctor_shows_an_agent_s_name_and_stderr_escaped(tmp_path: Path, lorch) -> None:  # type: ignore[no-untyped-def]
    from lorch.app.scenarios import materialize

    ws = tmp_path / "ws"
    materialize("acp-exactly-once", ws)
    script = ws / "agents" / "builder.json"
    body = json.loads(script.read_text())
    body["agent"] = {"name": "evil\x1b]0;pwned\x07\r[lorch] DONE\u202e", "version": "1\n[lorch] ok"}
    script.unlink()
    script.write_text(json.dumps(body))
    cfg = json.loads((ws / "lorch.json").read_text())
    forged = "import sys; sys.stderr.write('boom\\x1b[2J\\r\\x07\\n'); sys.exit(4)"
    cfg["agents"]["spec_maintainer"]["cmd"] = [sys.executable, "-c", forged]
    (ws / "lorch.json").write_text(json.dumps(cfg))
    r = lorch("doctor", "--workspace", str(ws), timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr
    assert not OBEYED.search(r.stdout), repr(r.stdout)
    assert "evil\\x1b]0;pwned\\x07\\x0d[lorch] DONE\\u202e 1" in r.stdout
    assert "[lorch] ok" in r.stdout  # its newline shown as such, or on an indented line
    assert "its stderr said: boom\\x1b[2J\\x0d\\x07" in r.stdout
    assert _lines_of_lorch(r.stdout) == []


def test_a_builder_answer_without_a_test_status_fails_only_its_attempt(
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = hostile_ws({"builder": "no_test_status"})
    r = lorch("run", "--workspace", str(ws))
    assert_clean_exit(r)
    errors = protocol_errors(ws)
    reason = "builder.completed without payload.tests.status pass or fail (found None)"
    assert [(e["role"], e["reason"]) for e in errors] == [("builder", reason)], errors
    failed = [x["payload"] for x in records(ws) if x.get("event") == "system.command_failed"]
    assert [(f["code"], f["attempt"]) for f in failed] == [("protocol_error", 0)]
    assert terminal_events(ws) == HAPPY


# -- files lorch reads back from the workspace ------------------------------------------


def _status_lists(lorch, ws: Path, run_id: str) -> None:  # type: ignore[no-untyped-def]
    s = lorch("status", "--workspace", str(ws))
    assert_clean_exit(s)
    assert run_id in s.stdout


def test_a_junk_run_index_written_by_an_agent_is_rebuilt(hostile_ws: Workspace, lorch) -> None:  # type: ignore[no-untyped-def]
    ws = hostile_ws({"builder": "junk_index"})
    r = lorch("run", "--workspace", str(ws))
    assert_clean_exit(r)
    (run_id,) = run_ids(ws)
    index = json.loads((ws / "state" / "index.json").read_text())
    assert [(e["run_id"], e["status"]) for e in index["runs"]] == [(run_id, "completed")]
    _status_lists(lorch, ws, run_id)
    (ws / "state" / "index.json").write_text('{"runs":[1,2,3]}')
    _status_lists(lorch, ws, run_id)
    assert_clean_exit(lorch("resume", "--workspace", str(ws)))
    assert_clean_exit(lorch("verify", "--workspace", str(ws)))


def _junk(path: Path, kind: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        path.symlink_to("/dev/zero")
    elif kind == "deep":
        path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    else:
        path.write_bytes(
            {"bytes": b"\xff\xfe\x00", "list": b"[1, 2]", "runs": b'{"runs": 3}'}[kind]
        )


KINDS = ["fifo", "symlink", "deep", "bytes", "list", "runs"]


@pytest.mark.parametrize("kind", KINDS)
def test_any_run_index_lets_run_status_and_resume_work(
    kind: str,
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = hostile_ws({})
    _junk(ws / "state" / "index.json", kind)
    assert_clean_exit(lorch("run", "--workspace", str(ws)))
    (run_id,) = run_ids(ws)
    _status_lists(lorch, ws, run_id)
    assert_clean_exit(lorch("resume", "--workspace", str(ws)))
    v = lorch("verify", "--workspace", str(ws))
    assert_clean_exit(v)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("rel", ["receipts/T-0042/step-9.json", "state/run.json"])
def test_a_junk_receipt_or_run_state_is_named_in_one_line(
    rel: str,
    kind: str,
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = hostile_ws({})
    assert_clean_exit(lorch("run", "--workspace", str(ws)))
    target = ws / rel
    if target.exists():
        target.unlink()
    _junk(target, kind)
    assert_clean_exit(lorch("status", "--workspace", str(ws)))
    v = lorch("validate", "--workspace", str(ws))
    assert_clean_exit(v, 1)
    assert f"{target}: " in v.stdout
    v = lorch("verify", "--workspace", str(ws))
    assert "Traceback" not in v.stderr + v.stdout
    # Not JSON (or JSON that is no receipt) is nobody's; other JSON may be another run's.
    if kind not in ("runs", "list") or (kind == "list" and rel.startswith("receipts")):
        assert v.returncode == 1 and f"{target}: " in v.stdout + v.stderr, v.stdout + v.stderr
    r = lorch("resume", "--workspace", str(ws))
    if rel.startswith("receipts") and kind != "runs":
        # lorch will not number receipts around a file that is none: one line says which.
        assert_clean_exit(r, 1)
        (line,) = r.stderr.splitlines()
        assert line.startswith(f"lorch: {target}: "), line
    else:  # state/run.json is only written, never read: resume replaces it
        assert_clean_exit(r)


JSONISH = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=12,
)
ENTRY = {
    "run_id": "run-20261124-120000-0123abcd",
    "task_id": "T-0042",
    "status": "running",
    "started_at": "2026-11-24T12:00:00Z",
    "updated_at": "2026-11-24T12:00:00Z",
    "ledger": "events/run-20261124-120000-0123abcd.ndjson",
}
# Any bytes, any JSON, and JSON that is nearly an index or a receipt.
CONTENTS = st.one_of(
    st.binary(max_size=200),
    JSONISH.map(lambda v: json.dumps(v).encode()),
    st.lists(
        st.one_of(JSONISH, st.just(ENTRY), st.builds(lambda v: {**ENTRY, "status": v}, JSONISH))
    ).map(lambda runs: json.dumps({"runs": runs}).encode()),
)


@pytest.mark.parametrize("rel", ["state/index.json", "state/run.json", "receipts/T-1/step-1.json"])
@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=CONTENTS)
def test_any_content_of_a_workspace_file_is_read_totally(rel: str, data: bytes) -> None:
    from lorch.app import cli
    from lorch.store import derived_files as store
    from lorch.wire.errors import StorageError

    with tempfile.TemporaryDirectory() as d:
        ws = Path(d)
        (ws / rel).parent.mkdir(parents=True)
        (ws / rel).write_bytes(data)
        index = store.read_index(ws)  # the index: what is valid in it, never an error
        assert all(isinstance(r, dict) and r.get("run_id") for r in index["runs"])
        store.update_index(ws, {**ENTRY, "run_id": "run-20261124-130000-0123abce"})
        try:
            receipts = store.iter_receipts(ws)
        except StorageError as e:
            assert str(e).startswith(str(ws / rel)) and "\n" not in str(e)
        else:
            assert all(isinstance(r, dict) for _, r in receipts)
        unreadable: list[str] = []
        store.iter_receipts(ws, problems=unreadable)  # verify's way: listed, not raised
        for path in cli.workspace_files(ws):  # `lorch validate`
            assert all(isinstance(p, str) for p in cli._file_problems(path))


# -- what an agent starts ends with it --------------------------------------------------


def _stray_of(ws: Path, role: str) -> tuple[int, int]:
    pid, started = (ws / ".hostile" / role / "stray").read_text().split()
    return int(pid), int(started)


def _alive(pid: int, started: int) -> bool:
    from lorch.agents import procs

    return procs.start_time(pid) == started and not procs.is_zombie(pid)


@pytest.fixture
def strays() -> Iterator[list[tuple[int, int]]]:
    """Processes a test found alive are killed at its end (a failing test leaves none)."""
    found: list[tuple[int, int]] = []
    yield found
    for pid, started in found:
        if _alive(pid, started):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sandbox", ["none", "auto"])
@pytest.mark.parametrize("attack", ["setsid_stray_exit", "setsid_stray"])
def test_what_an_agent_starts_out_of_its_group_ends_with_it(
    attack: str,
    sandbox: str,
    hostile_ws: Workspace,
    strays: list[tuple[int, int]],
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    # sandbox none: lorch's own doing (a subreaper); auto: bubblewrap's too, where it runs.
    ws = hostile_ws({"builder": attack}, builder={"sandbox": sandbox})
    r = lorch("run", "--workspace", str(ws))
    if sandbox == "none":
        strays.append(_stray_of(ws, "builder"))
    assert_clean_exit(r)
    assert terminal_events(ws) == HAPPY
    if sandbox == "none":
        assert not _alive(*strays[0]), "the builder's setsid process outlived lorch"
    failed = [x["payload"] for x in records(ws) if x.get("event") == "system.command_failed"]
    if attack == "setsid_stray_exit":
        # Its exit is seen as such at once, though the stray still holds its stdout.
        assert [f["code"] for f in failed] == ["agent_exited"], failed
        assert failed[0]["reason"].startswith("agent builder exited (code 3)")
    else:
        assert failed == []


def test_an_exited_agent_s_pipe_is_not_read_from_what_it_left_behind(tmp_path: Path) -> None:
    # The agent says its last words, leaves a process out of its group holding its
    # stdout, and exits. Its exit ends its channel: its last words count, the pipe is
    # closed, and what the stray writes afterwards is never read (it gets EPIPE).
    from lorch.agents.ndjson import AgentProcess
    from lorch.agents.transport import Inbox, Launch
    from lorch.wire.redact import Redactor

    event = {
        "kind": "event",
        "message_id": "evt-1",
        "correlation_id": "corr-1",
        "task_id": "T-1",
        "from": {"agent_type": "builder"},
        "event": "builder.progress",
        "payload": {},
        "occurred_at": "2026-12-01T12:00:00Z",
    }
    go, result, pidfile = tmp_path / "go", tmp_path / "result", tmp_path / "stray.pid"
    os.mkfifo(go)
    forged = json.dumps({**event, "message_id": "evt-forged"}) + "\n"
    stray = (
        "import os, sys\n"
        f"open({str(go)!r}, 'rb').read()\n"
        "try:\n"
        f"    os.write(1, {forged.encode()!r}); said = 'written'\n"
        "except BrokenPipeError:\n"
        "    said = 'EPIPE'\n"
        f"open({str(result)!r}, 'w').write(said)\n"
    )
    agent = (
        "import json, os, subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {stray!r}], start_new_session=True)\n"
        f"open({str(pidfile)!r} + '.tmp', 'w').write(str(p.pid))\n"
        f"os.rename({str(pidfile)!r} + '.tmp', {str(pidfile)!r})\n"
        f"sys.stdout.write({json.dumps(event) + chr(10)!r}); sys.stdout.flush()\n"
        "os._exit(0)\n"
    )
    launch = Launch(
        role="builder",
        argv=[sys.executable, "-c", agent],
        cwd=tmp_path,
        env=dict(os.environ),
        log_path=tmp_path / "logs" / "builder.ndjson",
        generation=1,
        redactor=Redactor([]),
        heartbeats=False,
    )
    inbox = Inbox()
    proc = AgentProcess(launch, inbox)
    stray_pid = None
    try:
        items = []
        deadline = time.monotonic() + 30
        while not items or items[-1].kind != "exit":
            assert time.monotonic() < deadline, f"no exit item: {[i.kind for i in items]}"
            item = inbox.get(timeout=1)
            if item is not None:
                items.append(item)
        assert [(i.kind, (i.message or {}).get("message_id")) for i in items] == [
            ("event", "evt-1"),
            ("exit", None),
        ]
        stray_pid = int(pidfile.read_text())
        stray_exit = os.pidfd_open(stray_pid)
        with open(go, "wb") as f:  # the stray writes now
            f.write(b"go")
        assert select.select([stray_exit], [], [], 30)[0], "the stray did not finish"
        os.close(stray_exit)
        assert result.read_text() == "EPIPE"
        assert inbox.get(timeout=0) is None
    finally:
        if stray_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(stray_pid, signal.SIGKILL)
        proc.kill()
        inbox.close()


SUBREAPER = """
import asyncio, json, os, subprocess, sys, time
from lorch.agents import procs

assert procs.become_subreaper()
helper = subprocess.Popen(["sleep", "60"])  # lorch's own group: a helper such as git
kept = asyncio.run(procs.spawn_async(["sleep", "60"], env=dict(os.environ)))  # an ACP agent
agent = procs.spawn(
    [sys.executable, "-c", "import subprocess, sys; "
     "p = subprocess.Popen(['sleep', '60'], start_new_session=True); print(p.pid)"],
    env=dict(os.environ),
)
stray = int(agent.stdout.readline())
agent.wait()
ended = procs.end_strays()
alive = [os.path.exists(f"/proc/{p}") for p in (kept.pid, helper.pid)]
print(json.dumps({"stray": stray, "ended": ended, "alive": alive}))
for p in (kept.pid, helper.pid):
    os.kill(p, 9)
"""


def test_lorch_ends_only_what_it_did_not_start(tmp_path: Path) -> None:
    # A subreaper adopts the stray an agent left (setsid) when the agent exits;
    # end_strays kills it, and spares what lorch started itself (procs.spawn,
    # procs.spawn_async) and the helpers in its own process group.
    r = subprocess.run(
        [sys.executable, "-c", SUBREAPER], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    said = json.loads(r.stdout)
    assert said["ended"] == [said["stray"]]
    assert said["alive"] == [True, True]
