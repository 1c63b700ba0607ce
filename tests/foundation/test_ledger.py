"""The ledger: durable appends, streaming replay, torn tails, the failpoint."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lorch.store import ledger
from lorch.store.failpoint import parse
from lorch.wire import protocol
from lorch.wire.errors import LedgerError, UsageError


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


def sealed(path: Path, *records: dict[str, object]) -> bytes:
    """Lines as lorch would write them at the start of ``path``'s ledger (chain included)."""
    key = ledger.load_key(path, create=True)
    prev, out = ledger.genesis(key, path.name), b""
    for r in records:
        line, prev = ledger.seal(key, prev, protocol.encode(r))
        out += line
    return out


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
    path = tmp_path / "events" / "run.ndjson"
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
    path = tmp_path / "events" / "run.ndjson"
    write(path, 2)
    with open(path, "ab") as f:
        f.write(b'{"kind": "ev\n')
    lg, torn = ledger.Ledger.open(path)
    lg.close()
    assert torn is not None and torn.line == 3
    assert ledger.scan(path).records == 2 and ledger.scan(path).torn is None


def test_corrupt_middle_line_is_an_error_naming_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    write(path, 3)
    lines = path.read_bytes().split(b"\n")
    lines[1] = b"garbage"
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(ledger.ForgedRecord, match=r"run\.ndjson:2: record 2 is not lorch's"):
        list(ledger.read(path))
    with pytest.raises(LedgerError, match=r":2:"):
        ledger.Ledger.open(path)


def test_schema_violation_in_ledger_names_json_path(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    bad = {**rec(1), "from": {"agent_type": "nobody"}}
    path.parent.mkdir()
    path.write_bytes(sealed(path, bad, rec(2)))
    with pytest.raises(LedgerError, match=r":1: .*\$\.from\.agent_type"):
        list(ledger.read(path))


def test_heartbeats_are_not_ledger_records(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    hb = {
        "kind": "heartbeat",
        "agent": {"agent_type": "builder", "agent_id": "b"},
        "seq": 0,
        "status": "ready",
        "pid": 1,
        "uptime_s": 0,
        "last_activity_at": "2026-11-24T12:00:00Z",
    }
    path.parent.mkdir()
    path.write_bytes(sealed(path, hb, rec(2)))
    with pytest.raises(LedgerError, match="command or event"):
        list(ledger.read(path))


@pytest.mark.parametrize("spec", ["after", "after:0", "later:3", "torn:x", "torn:-1"])
def test_bad_failpoint_spec(spec: str) -> None:
    with pytest.raises(UsageError, match="LORCH_CRASH_AT"):
        parse(spec)


SCRIPT = """
import sys
from pathlib import Path
from lorch.store import ledger
from lorch.store.faults import Faults
sys.path.insert(0, {tests!r})
from test_ledger import rec
lg, _ = ledger.Ledger.open(Path({path!r}), faults=Faults.from_env())
for i in range(10):
    lg.append(rec(i))
print("survived")
"""


def crash(path: Path, spec: str) -> subprocess.CompletedProcess[str]:
    code = SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))
    env = {"LORCH_CRASH_AT": spec, "PATH": ""}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_failpoint_after_k(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    r = crash(path, "after:4")
    assert r.returncode == -signal.SIGKILL and "survived" not in r.stdout
    assert ledger.scan(path).records == 4 and ledger.scan(path).torn is None
    # K counts the records already in the file from earlier processes.
    r = crash(path, "after:6")
    assert r.returncode == -signal.SIGKILL
    assert ledger.scan(path).records == 6


def test_failpoint_torn_k(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    r = crash(path, "torn:3")
    assert r.returncode == -signal.SIGKILL
    result = ledger.scan(path)
    assert result.records == 2 and result.torn is not None and result.torn.line == 3
    assert not path.read_bytes().endswith(b"\n")


def test_failpoint_unset_costs_nothing_and_does_nothing(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(tests=str(Path(__file__).parent), path=str(path))],
        capture_output=True,
        text=True,
        env={"PATH": ""},
    )
    assert r.returncode == 0 and "survived" in r.stdout
    assert ledger.scan(path).records == 10


# -- the chain: only lorch can write a record ------------------------------------


def forged(n: int, **fields: object) -> bytes:
    """A record as an agent would append it: well formed, with no (or a made-up) chain."""
    return protocol.encode({**rec(n), **fields})


def test_every_line_carries_the_chain_and_reading_strips_it(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    write(path, 2)
    raw = [json.loads(x) for x in path.read_bytes().splitlines()]
    assert all(r["chain"].startswith("hmac-sha256:") for r in raw)
    assert raw[0]["chain"] != raw[1]["chain"]
    assert all("chain" not in r for r in ledger.read(path))
    key = tmp_path / "state" / "ledger.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_forged_whole_last_line_is_refused_not_cut(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    write(path, 3)
    with open(path, "ab") as f:
        f.write(forged(4, event="system.run_completed"))
    before = path.read_bytes()
    with pytest.raises(ledger.ForgedRecord, match=r":4: record 4 \(system.run_completed from "):
        list(ledger.read(path))
    with pytest.raises(ledger.ForgedRecord) as e:
        ledger.Ledger.open(path)
    assert e.value.line == 4 and path.read_bytes() == before


@pytest.mark.parametrize(
    "tamper",
    ["edit", "drop", "swap", "made_up_chain"],
)
def test_tampering_names_the_first_line_that_is_not_lorch_s(tmp_path: Path, tamper: str) -> None:
    path = tmp_path / "events" / "run.ndjson"
    write(path, 4)
    lines = path.read_bytes().splitlines(keepends=True)
    if tamper == "edit":
        lines[1] = lines[1].replace(b'"n":2', b'"n":7')
    elif tamper == "drop":
        del lines[1]
    elif tamper == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    else:
        lines[1] = lines[1][:-68] + b"0" * 64 + b'"}\n'
    path.write_bytes(b"".join(lines))
    with pytest.raises(ledger.ForgedRecord, match=r"run\.ndjson:2: record 2 .*line 1 and every"):
        list(ledger.read(path))


def test_a_ledger_under_another_name_is_not_that_run_s(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run-a.ndjson"
    write(path, 2)
    other = path.with_name("run-b.ndjson")
    other.write_bytes(path.read_bytes())
    with pytest.raises(ledger.ForgedRecord, match=r"run-b\.ndjson:1: record 1 "):
        list(ledger.read(other))


def test_another_workspace_s_key_does_not_hold(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    write(path, 2)
    (tmp_path / "state" / "ledger.key").write_text(os.urandom(32).hex())
    with pytest.raises(ledger.ForgedRecord, match=":1:"):
        list(ledger.read(path))


def test_a_missing_key_is_one_line_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    write(path, 2)
    (tmp_path / "state" / "ledger.key").unlink()
    with pytest.raises(LedgerError, match=r"state/ledger\.key: missing"):
        list(ledger.read(path))
    with pytest.raises(LedgerError, match=r"ledger\.key: missing"):
        ledger.Ledger.open(path)


def test_a_torn_sealed_line_is_still_a_torn_tail(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    write(path, 3)
    whole = path.read_bytes()
    lg, _ = ledger.Ledger.open(path)
    lg.close()
    key = ledger.load_key(path)
    line, _ = ledger.seal(key, ledger.scan(path).chain, protocol.encode(rec(4)))
    with open(path, "ab") as f:
        f.write(line[:-5])  # the crash came mid-write: no newline
    lg, torn = ledger.Ledger.open(path)
    with lg:
        assert torn is not None and torn.line == 4
        assert path.read_bytes() == whole
        assert lg.append(rec(4)) == 4
    assert [r["payload"]["n"] for r in ledger.read(path)] == [1, 2, 3, 4]  # type: ignore[index]


def test_a_ledger_deleted_under_lorch_stops_the_next_append_and_is_restored(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events" / "run.ndjson"
    lg, _ = ledger.Ledger.open(path)
    with lg:
        for i in range(1, 4):
            lg.append(rec(i))
        written = path.read_bytes()
        path.unlink()
        with pytest.raises(ledger.LedgerGone, match=r"deleted while the run was going.*restored"):
            lg.append(rec(4))
    assert path.read_bytes() == written
    assert [r["payload"]["n"] for r in ledger.read(path)] == [1, 2, 3]  # type: ignore[index]


def test_a_ledger_replaced_under_lorch_is_kept_beside_the_impostor(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    lg, _ = ledger.Ledger.open(path)
    with lg:
        lg.append(rec(1))
        written = path.read_bytes()
        path.unlink()
        path.write_bytes(forged(1))
        with pytest.raises(
            ledger.LedgerGone, match=r"replaced by another file.*run\.ndjson\.lorch"
        ):
            lg.append(rec(2))
    assert path.with_name("run.ndjson.lorch").read_bytes() == written
    assert path.read_bytes() == forged(1)


def test_bytes_another_process_adds_stop_the_next_append(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    lg, _ = ledger.Ledger.open(path)
    with lg:
        lg.append(rec(1))
        lg.append(rec(2))
        with open(path, "ab") as f:
            f.write(forged(3, event="system.agent_restarted"))
        with pytest.raises(
            LedgerError, match=r"bytes lorch did not write were added after its record 2"
        ):
            lg.append(rec(3))
    with pytest.raises(
        ledger.ForgedRecord, match=r":3: record 3 \(system.agent_restarted from system"
    ):
        list(ledger.read(path))


def test_a_ledger_cut_below_its_noted_head_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events" / "run.ndjson"
    lg, _ = ledger.Ledger.open(path)
    with lg:
        for i in range(1, 5):
            lg.append(rec(i))
        lg.note_head()
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:2]))  # cut at a line boundary: the chain still holds
    assert len(list(ledger.read(path))) == 2
    with pytest.raises(LedgerError, match=r"holds 2 records, but lorch had recorded 4"):
        ledger.Ledger.open(path)
    path.write_bytes(b"".join(lines))
    lg, _ = ledger.Ledger.open(path)  # whole again: fine
    lg.close()
