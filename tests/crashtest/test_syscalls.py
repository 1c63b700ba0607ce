"""Crash states derived from the recorded system calls (the ``powercut`` mode).

The model is tested on small hand-made traces; the recording on a real run
(its final state must be the workspace the run left); and the mode on two bugs
that lorch's own bookkeeping hides from the live power-loss failpoint.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from lorch.crashtest import Options, crashtest, states, strace, syscalls
from lorch.crashtest.launcher import lorch_env

# Skipped only off CI: under CI (where .ci/run installs strace) a missing strace fails the tests.
needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None and not os.environ.get("CI"),
    reason="strace is not installed (.ci/run installs it)",
)


def small_trace() -> strace.Trace:
    # root(1) holds dir d(2); file f(3) is created in d, written twice with an
    # fsync between, then renamed to g; d is fsynced after the create only.
    root = strace.Inode(1, True, entries={"d": 2})
    d = strace.Inode(2, True)
    ops = [
        strace.Op("entry", 2, entry=("link", "f", 3, 0, "")),
        strace.Op("dirsync", 2),
        strace.Op("write", 3, offset=0, data=b"hello "),
        strace.Op("fsync", 3),
        strace.Op("write", 3, offset=6, data=b"world"),
        strace.Op("entry", 2, entry=("rename", "g", 3, 2, "f")),
    ]
    return strace.Trace(1, {1: root, 2: d}, ops, Path("/nowhere"))


def test_model_loses_only_what_was_not_synced() -> None:
    t = small_trace()
    assert states.unsynced(t, 6) == {3: [4], -2: [5]}
    assert states.materialize(t, states.Cut(6)) == {"d": None, "d/g": b"hello world"}
    # Every unsynced op lost: the second write and the rename.
    assert states.materialize(t, states.Cut(6, ((-1, 0),))) == {"d": None, "d/f": b"hello "}
    # The rename kept, the write lost; then the write torn after 2 bytes.
    assert states.materialize(t, states.Cut(6, ((3, 0),))) == {"d": None, "d/g": b"hello "}
    assert states.materialize(t, states.Cut(6, ((3, 0),), 3, 2)) == {"d": None, "d/g": b"hello wo"}
    # Before the directory fsync the create itself may be lost.
    assert states.materialize(t, states.Cut(1, ((-1, 0),))) == {"d": None}


def test_cuts_cover_prefixes_losses_and_torn_bytes() -> None:
    t = small_trace()
    cuts = list(states.cuts(t, "all"))
    assert {c.prefix for c in cuts} == set(range(7))
    torn = sorted(c.torn for c in cuts if c.prefix == 6 and c.torn_obj == 3)
    assert torn == [1, 2, 3, 4]  # "world" torn at every inner byte
    edges = sorted(c.torn for c in states.cuts(t) if c.prefix == 6 and c.torn_obj == 3)
    assert edges == [1, 2, 4]
    n, distinct = states.distinct_states(t, "all")
    assert n == len(cuts) and len(distinct) < n
    digests = {states.digest(states.materialize(t, c)) for c in distinct}
    assert len(digests) == len(distinct)
    # Each enumerated cut is answered by exactly one distinct state: the one with its files.
    _, same, covers = states.counted_states(t, "all")
    assert same == distinct and sum(covers.values()) == n
    for c in distinct:
        d = states.digest(states.materialize(t, c))
        assert covers[c] == sum(states.digest(states.materialize(t, x)) == d for x in cuts)


def _hex(text: str | Path) -> str:
    return "".join(f"\\x{b:02x}" for b in str(text).encode())


def test_parser_reads_an_strace_log_into_operations(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a").write_bytes(b"old")
    f, g, a = (_hex(ws / n) for n in ("f", "g", "a"))
    log = [
        f'100 openat(AT_FDCWD, "{f}", O_WRONLY|O_CREAT|O_APPEND, 0600) = 3<{f}>',
        f'100 write(3<{f}>, "{_hex("hello")}", 5 <unfinished ...>',
        f"101 fsync(4<{a}>) = -1 EBADF (Bad file descriptor)",  # failed: no operation
        "100 <... write resumed>)    = 5",
        f"100 fsync(3<{f}>) = 0",
        f"100 close(3<{f}>) = 0",
        f'100 rename("{f}", "{g}") = 0',
        f'100 openat(AT_FDCWD, "{_hex(ws)}", O_RDONLY|O_DIRECTORY) = 4<{_hex(ws)}>',
        f"100 fsync(4<{_hex(ws)}>) = 0",
        f'101 unlink("{a}") = 0',
        "garbage that is not a call",
    ]
    (tmp_path / "strace.log").write_text("\n".join(log) + "\n")
    trace = strace.parse(tmp_path / "strace.log", strace.Namespace(ws))
    # The root is inode 1, the existing file 2, the created one 3.
    assert trace.ops == [
        strace.Op("entry", 1, entry=("link", "f", 3, 0, ""), pid=100),
        strace.Op("write", 3, offset=0, data=b"hello", pid=100),
        strace.Op("fsync", 3, pid=100),
        strace.Op("entry", 1, entry=("rename", "g", 3, 1, "f"), pid=100),
        strace.Op("dirsync", 1, pid=100),
        strace.Op("entry", 1, entry=("unlink", "a", 0, 0, ""), pid=101),
    ]
    assert trace.initial[2].data == b"old"
    assert states.materialize(trace, states.Cut(len(trace.ops))) == {"g": b"hello"}
    # Lost after the directory fsync: only the unlink; the old file is back.
    assert states.materialize(trace, states.Cut(6, ((-1, 0),))) == {"a": b"old", "g": b"hello"}


def test_recorded_pids_are_disarmed() -> None:
    files: dict[str, bytes | None] = {
        "events/run-1.ndjson": b'{"payload":{"pid":4242,"pgid":4242,"role":"builder"}}\n',
        "state/run.json": b'{"agents": {"builder": {"pgid": 4242, "pid": 4242}}}',
        "src/x.py": b'"pid": 4242',
    }
    syscalls.disarm_pids(files, {4242})
    me = str(os.getpid()).encode()
    assert (
        files["events/run-1.ndjson"]
        == b'{"payload":{"pid":' + me + b',"pgid":4242,"role":"builder"}}\n'
    )
    assert files["state/run.json"] == b'{"agents": {"builder": {"pgid": 4242, "pid": ' + me + b"}}}"
    assert files["src/x.py"] == b'"pid": 4242'  # not lorch's: untouched


@needs_strace
@pytest.mark.e2e
def test_recording_replays_to_the_workspace_the_run_left(tmp_path: Path) -> None:
    trace = strace.record("happy-path", lorch_env({}, None), tmp_path)
    kinds = {op.kind for op in trace.ops}
    assert kinds == {"write", "fsync", "entry", "dirsync"}
    final = states.materialize(trace, states.Cut(len(trace.ops)))
    ws = tmp_path / "ws"
    real: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(ws):
        for name in dirnames:
            real[str((Path(dirpath) / name).relative_to(ws))] = None
        for name in filenames:
            real[str((Path(dirpath) / name).relative_to(ws))] = (Path(dirpath) / name).read_bytes()
    assert final == real
    # Receipts are linked into place, never renamed: nothing could destroy one.
    assert syscalls.receipt_rewrites(trace) == []
    assert any(op.entry is not None and op.entry[1] == "step-1.json" for op in trace.ops)


def _failures(bug: str, modes: list[str], opts: Options) -> dict[str, str]:
    opts.extra_env = {"LORCH_PLANT_BUG": bug} if bug else {}
    _, results = crashtest("happy-path", modes, None, opts)
    return {r.point.name: r.invariant for r in results if r.verdict == "fail"}


@needs_strace
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.xdist_group("crash-matrix")
@pytest.mark.timeout(900)
@pytest.mark.parametrize(
    ("bug", "invariant"),
    [
        # Commands reach agents before they are on disk: a power cut keeps the
        # agent's (synced) journal and loses the command.
        ("ledger_fsync_skipped", "write_ahead"),
        # A missing directory fsync (the end of the run durable, the receipts'
        # names not) is bench/harness_power.py's mutant "atomic: no directory
        # fsync after linking receipts", caught by the same powercut states.
    ],
)
def test_bugs_hidden_by_lorchs_bookkeeping_are_caught(bug: str, invariant: str) -> None:
    # The live power-loss failpoint trusts lorch's count of synced bytes: it misses both.
    live = _failures(bug, ["powerloss"], Options(jobs=2))
    assert live == {}, live
    found = _failures(bug, ["powercut"], Options(jobs=2, cuts="lost"))
    assert found, f"{bug} was not caught"
    # The invariant that names the fault is among those broken (a lost command
    # also changes what resume sends: commands_match_baseline may break too).
    assert invariant in set(found.values()), found


@needs_strace
@pytest.mark.e2e
@pytest.mark.slow
@pytest.mark.xdist_group("crash-matrix")
@pytest.mark.timeout(900)
def test_correct_lorch_survives_every_strict_power_cut() -> None:
    assert _failures("", ["powercut"], Options(jobs=2, cuts="lost")) == {}


def test_strace_missing_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from lorch.wire.errors import UsageError

    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))
    if shutil.which("strace") is not None:
        pytest.skip("strace is in the interpreter's directory")
    with pytest.raises(UsageError, match="need strace"):
        strace.strace_path()
