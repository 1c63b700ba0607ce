"""lorch.store.safefs: no symlink followed, no FIFO opened blocking, reads bounded.

Issue 22 point 3.
"""

from __future__ import annotations

import os
import stat
import threading
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorch.store import atomic, safefs
from lorch.store.paths import lorch_owned, sha256_regular, verdict_owner
from lorch.wire.errors import PathEscape, StorageError


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    w = tmp_path / "ws"
    w.mkdir()
    (tmp_path / "outside").mkdir()
    return w


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../x", "a\x00b", ".", "./"])
def test_paths_that_could_leave_the_root_are_refused(ws: Path, bad: str) -> None:
    with pytest.raises(PathEscape):
        safefs.write_file(ws, bad, b"x")
    with pytest.raises(PathEscape):
        safefs.read_regular(ws, bad, 10)


def test_a_symlinked_directory_is_never_followed(ws: Path) -> None:
    outside = ws.parent / "outside"
    (outside / "secret.txt").write_text("secret")
    (ws / "link").symlink_to(outside)
    (ws / "in").mkdir()
    (ws / "in" / "deeper").symlink_to(outside)
    for rel in ("link/secret.txt", "link/new.txt", "in/deeper/new.txt", "in/deeper/x/new.txt"):
        with pytest.raises(PathEscape, match="through a symlink"):
            safefs.write_file(ws, rel, b"pwned")
    for rel in ("link/secret.txt", "in/deeper/secret.txt"):
        with pytest.raises(PathEscape, match="through a symlink"):
            safefs.read_regular(ws, rel, 100)
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"
    # Even a link that stays inside: lorch never follows one.
    (ws / "alias").symlink_to(ws / "in")
    with pytest.raises(PathEscape):
        safefs.write_file(ws, "alias/x.txt", b"x")


def test_a_symlink_as_the_file_itself_is_refused_not_followed_nor_replaced(ws: Path) -> None:
    outside = ws.parent / "outside" / "target.txt"
    outside.write_text("theirs")
    outside.chmod(0o600)
    (ws / "f.txt").symlink_to(outside)
    with pytest.raises(PathEscape, match="through a symlink"):
        safefs.write_file(ws, "f.txt", b"mine")
    with pytest.raises(PathEscape, match="through a symlink"):
        safefs.read_regular(ws, "f.txt", 100)
    assert outside.read_text() == "theirs"
    assert stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert (ws / "f.txt").is_symlink()


def test_a_directory_swapped_for_a_symlink_during_writes_never_escapes(ws: Path) -> None:
    # ws/d flips atomically between a link to a directory inside the workspace
    # (which a check that resolves the path accepts) and a link to outside:
    # a check-then-write lets some writes out; an open by descriptor, none.
    outside = ws.parent / "outside"
    (ws / "real").mkdir()
    (ws / "d").symlink_to(ws / "real")
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            for target in (outside, ws / "real"):
                (ws / "d.new").symlink_to(target)
                os.replace(ws / "d.new", ws / "d")

    t = threading.Thread(target=flip)
    t.start()
    refused = 0
    try:
        for i in range(400):
            with pytest.raises(PathEscape, match="through a symlink"):
                safefs.write_file(ws, f"d/f{i}.txt", b"x")
            refused += 1
    finally:
        stop.set()
        t.join()
    assert os.listdir(outside) == [] and os.listdir(ws / "real") == []
    assert refused == 400


def test_a_directory_replaced_while_open_keeps_the_write_where_it_was_checked(ws: Path) -> None:
    # The directory is opened once; moving it away and putting a symlink in its
    # place afterwards changes nothing: the descriptor is the directory.
    (ws / "d").mkdir()
    outside = ws.parent / "outside"
    with safefs.open_dir(ws, ["d"]) as dfd:
        os.rename(ws / "d", ws / "moved")
        (ws / "d").symlink_to(outside)
        safefs.write_file(dfd, "f.txt", b"x")
    assert (ws / "moved" / "f.txt").read_bytes() == b"x"
    assert os.listdir(outside) == []


def test_the_temp_file_is_unpredictable_and_created_exclusively(ws: Path) -> None:
    (ws / "a.txt").write_text("old")
    before = set(os.listdir(ws))
    safefs.write_file(ws, "a.txt", b"new")
    assert (ws / "a.txt").read_bytes() == b"new"
    assert set(os.listdir(ws)) == before  # no temp file left
    # No name derived from the pid: a planted ".a.txt.lorch-<pid>" symlink is not used.
    planted = ws / f".a.txt.lorch-{os.getpid()}"
    target = ws.parent / "outside" / "victim"
    target.write_text("v")
    planted.symlink_to(target)
    safefs.write_file(ws, "a.txt", b"newer")
    assert target.read_text() == "v"


def test_writes_keep_the_mode_of_an_existing_file_without_set_id_bits(ws: Path) -> None:
    (ws / "run.sh").write_text("#!/bin/sh\n")
    (ws / "run.sh").chmod(0o755)
    safefs.write_file(ws, "run.sh", b"#!/bin/sh\necho hi\n")
    assert stat.S_IMODE((ws / "run.sh").stat().st_mode) == 0o755
    (ws / "s").write_text("")
    (ws / "s").chmod(0o4750)
    safefs.write_file(ws, "s", b"x")
    assert stat.S_IMODE((ws / "s").stat().st_mode) == 0o750
    safefs.write_file(ws, "new/deep/n.txt", b"n")
    assert stat.S_IMODE((ws / "new/deep/n.txt").stat().st_mode) == 0o644


def test_non_regular_files_are_refused_at_once(ws: Path) -> None:
    os.mkfifo(ws / "fifo")
    (ws / "dir").mkdir()
    outcome: list[BaseException] = []

    def attempt() -> None:
        # A FIFO without a writer: a blocking open would never return.
        for call in (
            lambda: safefs.read_regular(ws, "fifo", 100),
            lambda: safefs.write_file(ws, "fifo", b"x"),
            lambda: sha256_regular(ws, "fifo"),
            lambda: safefs.read_regular(ws, "dir", 100),
        ):
            try:
                call()
            except BaseException as e:
                outcome.append(e)

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(30)
    assert not t.is_alive(), "opening a FIFO blocked"
    assert [type(e) for e in outcome] == [safefs.NotRegular] * 4
    assert "a FIFO" in str(outcome[0]) and "a directory" in str(outcome[3])
    assert stat.S_ISFIFO((ws / "fifo").lstat().st_mode)
    with pytest.raises(safefs.NotRegular, match="character device"):
        safefs.read_regular("/", "dev/zero", 100)


def test_reads_are_bounded(ws: Path) -> None:
    (ws / "big").write_bytes(b"x" * 5000)
    assert safefs.read_regular(ws, "big", 5000) == b"x" * 5000
    with pytest.raises(safefs.TooLarge):
        safefs.read_regular(ws, "big", 4999)


def test_read_lines_of_a_huge_sparse_file_holds_only_what_it_returns(ws: Path) -> None:
    path = ws / "sparse"
    with open(path, "wb") as f:
        f.write(b"first\nsecond\nthird\n")
        f.truncate(1 << 30)  # 1 GiB, mostly a hole of NUL bytes with no newline
    tracemalloc.start()
    try:
        with safefs.opened(ws, "sparse") as fd:
            assert safefs.read_lines(fd, 2, 1, 1 << 20) == b"second\n"
        with safefs.opened(ws, "sparse") as fd:
            assert safefs.read_lines(fd, None, 2, 1 << 20) == b"first\nsecond\n"
        # The fourth "line" is the whole hole: refused once past the cap, not read whole.
        with safefs.opened(ws, "sparse") as fd, pytest.raises(safefs.TooLarge):
            safefs.read_lines(fd, 4, 1, 1 << 20)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, peak


def test_read_lines_numbering_and_limits(ws: Path) -> None:
    text = b"".join(b"line %d\n" % i for i in range(1, 30001)) + b"tail"
    (ws / "f").write_bytes(text)
    lines = text.split(b"\n")

    def read(line: int | None, limit: int | None) -> bytes:
        with safefs.opened(ws, "f") as fd:
            return safefs.read_lines(fd, line, limit, 1 << 30)

    assert read(None, None) == text
    assert read(1, 1) == b"line 1\n"
    assert read(12345, 3) == b"line 12345\nline 12346\nline 12347\n"
    assert read(29999, None) == b"line 29999\nline 30000\ntail"
    assert read(30001, 5) == b"tail"
    assert read(40000, 5) == b""
    assert read(0, 1) == b"line 1\n"
    assert read(5, 0) == b""
    assert len(lines) == 30001


def test_lorch_s_own_paths_are_named_in_one_place() -> None:
    for rel in (
        "lorch.json",
        "LORCH.JSON",
        ".git/hooks/pre-commit",
        "vendor/lib/.git/config",
        "events/run.ndjson",
        "state/checkpoints.git/config",
        "receipts/T-1/step-1.json",
        "snapshots/x.json",
        "logs/builder/run.ndjson",
        "transcripts/run.txt",
        "./state/run.json",
    ):
        assert lorch_owned(rel) is not None, rel
    for rel in ("src/lorch.json", "src/events/x.py", "reviews/T-1.json", "gitignore"):
        assert lorch_owned(rel) is None, rel
    assert verdict_owner("reviews/T-1.json") == "reviewer"
    assert verdict_owner("spec_notes/T-1.json") == "spec_maintainer"
    assert verdict_owner("src/reviews/T-1.json") is None


# -- lorch's own files (lorch.store.atomic) ----------------------------------------------


def test_lorch_s_own_writes_refuse_a_symlinked_folder_below_the_workspace(tmp_path: Path) -> None:
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    outside.mkdir()
    (ws / "receipts").mkdir(parents=True)
    (ws / "receipts" / "T-1").symlink_to(outside)
    (ws / "logs").symlink_to(outside)
    with pytest.raises(StorageError, match="'T-1' in lorch's own files is a symlink"):
        atomic.atomic_write_bytes(ws / "receipts" / "T-1" / "step-1.json", b"{}")
    with pytest.raises(StorageError, match="'T-1' in lorch's own files is a symlink"):
        atomic.atomic_create_many([(ws / "receipts" / "T-1" / "step-2.json", b"{}")])
    with pytest.raises(StorageError, match="'logs' in lorch's own files is a symlink"):
        atomic.ensure_dir(ws / "logs" / "builder")
    with pytest.raises(StorageError, match="'logs' in lorch's own files is a symlink"):
        atomic.open_append(ws / "logs" / "builder" / "run.ndjson")
    assert os.listdir(outside) == []


def test_lorch_s_own_file_as_a_symlink_is_replaced_or_refused_never_followed(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    victim = tmp_path / "victim"
    victim.write_text("user data")
    victim.chmod(0o644)
    (ws / "state").mkdir(parents=True)
    (ws / "state" / "run.json").symlink_to(victim)
    atomic.atomic_write_json(ws / "state" / "run.json", {"x": 1})
    assert not (ws / "state" / "run.json").is_symlink()
    (ws / "logs" / "builder").mkdir(parents=True)
    (ws / "logs" / "builder" / "run.ndjson").symlink_to(victim)
    with pytest.raises(StorageError, match="is a symlink"):
        atomic.open_append(ws / "logs" / "builder" / "run.ndjson")
    os.mkfifo(ws / "logs" / "builder" / "fifo.ndjson")
    with pytest.raises(StorageError, match="not a regular file"):
        atomic.open_append(ws / "logs" / "builder" / "fifo.ndjson")
    assert victim.read_text() == "user data"
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644


def test_a_log_is_appended_to_and_private(tmp_path: Path) -> None:
    log = tmp_path / "ws" / "logs" / "builder" / "run.ndjson"
    with atomic.open_append(log) as f:
        f.write("one\n")
    log.chmod(0o644)
    with atomic.open_append(log) as f:
        f.write("two\n")
    assert log.read_text() == "one\ntwo\n"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700


def test_symlinks_above_the_workspace_are_the_user_s(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    atomic.atomic_write_bytes(tmp_path / "alias" / "ws" / "state" / "run.json", b"{}")
    assert (tmp_path / "real" / "ws" / "state" / "run.json").read_bytes() == b"{}"
    atomic.atomic_write_bytes(tmp_path / "alias" / "report.xml", b"<x/>")
    assert (tmp_path / "real" / "report.xml").read_bytes() == b"<x/>"


@given(
    data=st.binary(max_size=200).map(lambda b: b.replace(b"\x00", b"\n")),
    line=st.none() | st.integers(min_value=-1, max_value=40),
    limit=st.none() | st.integers(min_value=-1, max_value=40),
    chunk=st.integers(min_value=1, max_value=17),
)
def test_read_lines_is_the_slice_of_the_lines_whatever_the_chunks(
    tmp_path_factory: pytest.TempPathFactory,
    data: bytes,
    line: int | None,
    limit: int | None,
    chunk: int,
) -> None:
    path = tmp_path_factory.mktemp("lines") / "f"
    path.write_bytes(data)
    lines = data.split(b"\n")
    pieces = [x + b"\n" for x in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
    start = max(line or 1, 1) - 1
    want = b"".join(pieces[start : None if limit is None else start + max(limit, 0)])
    old = safefs.CHUNK
    safefs.CHUNK = chunk
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            assert safefs.read_lines(fd, line, limit, 1 << 20) == want
        finally:
            os.close(fd)
    finally:
        safefs.CHUNK = old
