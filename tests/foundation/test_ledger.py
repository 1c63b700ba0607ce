"""The ledger: durable appends, streaming replay, torn tails, the failpoint."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lorch import ledger, protocol
from lorch.errors import LedgerError, UsageError
from lorch.failpoint import parse


def rec(n: int) -> dict[str, object]:
    return {
        "kind": "event",
        "message_id": f"evt-{n}",
        "correlation_id": "run-x",
        "task_id": "T-0042",
        "from": {"agent_type": "system"},
        "event": "system.run_started",
        "payload": {"n": n},
        "occurred_at": "2026-11-24T12:00:00Z",
    }


def write(path: Path, n: int) -> None:
    lg, torn = ledger.Ledger.open(path)
    assert torn is None
    with lg:
        for i in range(1, n + 1):
            assert lg.append(rec(i)) == lg.records


def test_append_and_replay(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    write(path, 5)
    assert [r["payload"]["n"] for r in ledger.read(path)] == [1, 2, 3, 4, 5]  # type: ignore[index]
    lg, _ = ledger.Ledger.open(path)
    with lg:
        assert lg.records == 5
        assert lg.append(rec(6)) == 6


def test_torn_tail_without_newline_is_cut_and_reported(tmp_path: Path) -> None:
    path = tmp_path / "run.ndjson"
    write(path, 3)
    whole = path.read_bytes()
    with open(path, "ab") as f:
        f.write(protocol.encode(rec(4))[:30])
    assert len(list(ledger.read(path))) == 3
    lg, torn = ledger.Ledger.open(path)
    lg.close()
    assert torn is not None and torn.line == 4 and torn.reason == "no newline"
    assert path.read_bytes() == whole


def test_unparsable_last_line_is_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "run.ndjson"
    write(path, 2)
    with open(path, "ab") as f:
        f.write(b'{"kind": "ev\n')
    lg, torn = ledger.Ledger.open(path)
    lg.close()
    assert torn is not None and torn.line == 3
    assert ledger.scan(path).records == 2 and ledger.scan(path).torn is None


def test_corrupt_middle_line_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "run.ndjson"
    write(path, 3)
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(LedgerError, match=r"run\.ndjson:2: unreadable ledger record"):
        list(ledger.read(path))
    with pytest.raises(LedgerError, match=r":2:"):
        ledger.Ledger.open(path)


def test_schema_violation_in_ledger_names_json_path(tmp_path: Path) -> None:
    path = tmp_path / "run.ndjson"
    bad = {**rec(1), "from": {"agent_type": "nobody"}}
    path.write_bytes(protocol.encode(bad) + protocol.encode(rec(2)))
    with pytest.raises(LedgerError, match=r":1: .*\$\.from\.agent_type"):
        list(ledger.read(path))


def test_heartbeats_are_not_ledger_records(tmp_path: Path) -> None:
    path = tmp_path / "run.ndjson"
    hb = {
        "kind": "heartbeat",
        "agent": {"agent_type": "builder", "agent_id": "b"},
        "seq": 0,
        "status": "ready",
        "pid": 1,
        "uptime_s": 0,
        "last_activity_at": "2026-11-24T12:00:00Z",
    }
    path.write_bytes(protocol.encode(hb) + protocol.encode(rec(2)))
    with pytest.raises(LedgerError, match="command or event"):
        list(ledger.read(path))


@pytest.mark.parametrize("spec", ["after", "after:0", "later:3", "torn:x", "torn:-1"])
def test_bad_failpoint_spec(spec: str) -> None:
    with pytest.raises(UsageError, match="LORCH_CRASH_AT"):
        parse(spec)


SCRIPT = """
import sys
from pathlib import Path
from lorch import ledger
sys.path.insert(0, {tests!r})
from test_ledger import rec
lg, _ = ledger.Ledger.open(Path({path!r}))
for i in range(10):
    lg.append(rec(i))
print("survived")
"""


def crash(path: Path, spec: str) -> subprocess.CompletedProcess[str]:
    code = SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    env = {"LORCH_CRASH_AT": spec, "PATH": ""}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_failpoint_after_k(tmp_path: Path) -> None:
    path = tmp_path / "run.ndjson"
    r = crash(path, "after:4")
    assert r.returncode == -signal.SIGKILL and "survived" not in r.stdout
    assert ledger.scan(path).records == 4 and ledger.scan(path).torn is None
    # K counts the records already in the file from earlier processes.
    r = crash(path, "after:6")
    assert r.returncode == -signal.SIGKILL
    assert ledger.scan(path).records == 6


def test_failpoint_torn_k(tmp_path: Path) -> None:
    path = tmp_path / "run.ndjson"
    r = crash(path, "torn:3")
    assert r.returncode == -signal.SIGKILL
    result = ledger.scan(path)
    assert result.records == 2 and result.torn is not None and result.torn.line == 3
    assert not path.read_bytes().endswith(b"\n")


def test_failpoint_unset_costs_nothing_and_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / "run.ndjson"
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))],
        capture_output=True,
        text=True,
        env={"PATH": ""},
    )
    assert r.returncode == 0 and "survived" in r.stdout
    assert ledger.scan(path).records == 10
