"""Checkpoints that rescan only what changed (lorch/store/watch.py) record exactly
what a full scan records: each take is compared with a second store that scans
everything, after random edits of every kind, and the fallbacks to a full scan
are each forced once."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorch.store import watch
from lorch.store.checkpoint import Checkpoints
from tests.conftest import examples

pytestmark = pytest.mark.skipif(
    not watch.enabled(),
    reason="no change tracking here: inotify is Linux only, or LORCH_CHECKPOINT_WATCH=0",
)


def pair(ws: Path) -> tuple[Checkpoints, Checkpoints]:
    """(the one under test, a reference that scans every path every time)."""
    fast = Checkpoints(ws, ws / "state" / "fast.git", durable=False)
    full = Checkpoints(ws, ws / "state" / "full.git", durable=False, watch=False)
    return fast, full


def agree(fast: Checkpoints, full: Checkpoints) -> str:
    tree = fast.take()
    assert tree == full.take()
    return tree


def put(ws: Path, rel: str, data: str = "x") -> None:
    p = ws / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.is_symlink():
        p.unlink()  # replaced, not written through
    p.write_text(data)


DIRS = ["", "src", "src/pkg", "src/pkg/deep", "docs", "build", ".hidden", "events", "node"]
NAMES = ["a.py", "b.txt", "c.log", ".env", "d"]


def _path(data: st.DataObject) -> str:
    d = data.draw(st.sampled_from(DIRS))
    n = data.draw(st.sampled_from(NAMES))
    return f"{d}/{n}" if d else n


def _edit(ws: Path, data: st.DataObject) -> None:
    kind = data.draw(
        st.sampled_from(
            [
                "write",
                "write",
                "write",
                "delete",
                "rmtree",
                "rename",
                "rename_dir",
                "chmod",
                "symlink",
                "file_to_dir",
                "atomic",
                "temp",
                "gitignore",
                "mkdir",
            ]
        )
    )
    rel = _path(data)
    p = ws / rel
    if kind == "write":
        if p.is_dir() and not p.is_symlink():
            return
        put(ws, rel, data.draw(st.text("ab\n", max_size=8)))
    elif kind == "delete":
        if p.is_symlink() or p.is_file():
            p.unlink()
    elif kind == "rmtree":
        d = ws / data.draw(st.sampled_from(DIRS[1:]))
        if d.is_dir() and not d.is_symlink():
            shutil.rmtree(d)
    elif kind == "rename":
        dest = ws / _path(data)
        if (p.is_file() or p.is_symlink()) and not dest.is_dir():
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(p, dest)
    elif kind == "rename_dir":
        src, dst = ws / "src/pkg", ws / data.draw(st.sampled_from(["pkg2", "docs/pkg", "src/p"]))
        if src.is_dir() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.rename(src, dst)
    elif kind == "chmod":
        if p.is_file() and not p.is_symlink():
            p.chmod(p.stat().st_mode ^ 0o100)
    elif kind == "symlink":
        if not os.path.lexists(p):
            p.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(data.draw(st.sampled_from(["a.py", "../src", "src"])), p)
    elif kind == "file_to_dir":
        if p.is_file() and not p.is_symlink():
            p.unlink()
            put(ws, f"{rel}/inner.txt")
        elif p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
            put(ws, rel, "was a directory")
    elif kind == "atomic":  # write a temp file, rename it over the real one
        if not p.is_dir():
            put(ws, rel + ".tmp", "atomic")
            os.replace(ws / (rel + ".tmp"), p)
    elif kind == "temp":  # made and gone between two takes
        if not p.exists():
            put(ws, rel, "temp")
            p.unlink()
    elif kind == "gitignore":
        put(
            ws,
            data.draw(st.sampled_from([".gitignore", "src/.gitignore", "src/pkg/.gitignore"])),
            # "*": an ignore file that ignores itself (held all the same).
            data.draw(st.sampled_from(["*.log\n", "build/\n", "", "d\n", "*\n", "*\n!a.py\n"])),
        )
    elif kind == "mkdir":
        (ws / data.draw(st.sampled_from(DIRS[1:])) / "new" / "deeper").mkdir(
            parents=True, exist_ok=True
        )
        put(ws, f"{data.draw(st.sampled_from(DIRS[1:]))}/new/deeper/f.py")


@settings(max_examples=examples(60), deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_take_equals_a_full_scan(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    ws = tmp_path_factory.mktemp("ws")
    put(ws, "src/pkg/a.py", "seed")
    fast, full = pair(ws)
    agree(fast, full)
    for _ in range(data.draw(st.integers(1, 6))):
        for _ in range(data.draw(st.integers(0, 5))):
            _edit(ws, data)
        agree(fast, full)
    fast.close()


def test_plain_edits_rescan_only_what_changed(tmp_path: Path) -> None:
    for i in range(30):
        put(tmp_path, f"src/d{i % 5}/f{i}.py", "v0")
    put(tmp_path, "README.md", "top")
    fast, full = pair(tmp_path)
    agree(fast, full)
    assert fast.full_scans == 1
    steps = [
        lambda: put(tmp_path, "src/d1/f1.py", "v1"),  # a change
        lambda: put(tmp_path, "src/new/deep/x.py", "new"),  # a new directory tree
        lambda: put(tmp_path, "src/new/deep/x.py", "changed in the new tree"),
        lambda: (tmp_path / "src/d2/f2.py").unlink(),  # a removal
        lambda: shutil.rmtree(tmp_path / "src/d3"),  # a directory removed
        lambda: put(tmp_path, "README.md", "changed"),  # the top of the tree
        lambda: (tmp_path / "README.md").unlink(),
        lambda: put(tmp_path, "events/run.ndjson", "lorch's own"),  # never held
        lambda: put(tmp_path, ".mockagent/cache", "an agent's own"),
        lambda: None,  # nothing at all
    ]
    for step in steps:
        step()
        agree(fast, full)
    assert (fast.full_scans, fast.partial_scans) == (1, len(steps))


def test_a_file_made_in_a_new_directory_right_after_a_take_is_seen(tmp_path: Path) -> None:
    fast, full = pair(tmp_path)
    agree(fast, full)
    for i in range(40):
        put(tmp_path, f"n{i}/a/b/c.txt", "made")
        agree(fast, full)  # the new tree is watched as it is scanned
        put(tmp_path, f"n{i}/a/b/c.txt", "changed")
        put(tmp_path, f"n{i}/a/b/d/e.txt", "deeper")
        agree(fast, full)
    assert fast.full_scans == 1


def test_ignored_directories_are_not_watched_and_an_ignore_change_rescans_all(
    tmp_path: Path,
) -> None:
    put(tmp_path, ".gitignore", "build/\n*.log\n")
    put(tmp_path, "build/out.o", "obj")
    put(tmp_path, "src/a.py", "a")
    fast, full = pair(tmp_path)
    agree(fast, full)
    put(tmp_path, "build/more/out2.o", "obj")  # ignored: no rescan, nothing recorded
    put(tmp_path, "src/app.log", "log")
    put(tmp_path, "top.log", "log")
    agree(fast, full)
    assert fast.full_scans == 1
    put(tmp_path, ".gitignore", "*.log\n")  # build/ is held from now on
    agree(fast, full)
    assert fast.full_scans == 2
    put(tmp_path, "build/out.o", "changed")
    agree(fast, full)
    assert fast.full_scans == 2


def test_a_moved_directory_and_an_overflowing_queue_rescan_all(tmp_path: Path) -> None:
    put(tmp_path, "src/pkg/a.py", "a")
    fast, full = pair(tmp_path)
    agree(fast, full)
    os.rename(tmp_path / "src/pkg", tmp_path / "src/moved")
    agree(fast, full)
    assert fast.full_scans == 2
    put(tmp_path, "src/moved/a.py", "changed where it is now")
    agree(fast, full)
    assert fast.full_scans == 2
    # More events than the kernel queues (16,384 by default): the queue overflows.
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    fds = [os.open(tmp_path / f"src/q{i}", os.O_WRONLY | os.O_CREAT, 0o644) for i in range(2)]
    for i in range(limit + 10):
        os.write(fds[i % 2], b"x")
    for fd in fds:
        os.close(fd)
    agree(fast, full)
    assert fast.full_scans == 3


def test_an_index_another_writer_changed_is_not_trusted(tmp_path: Path) -> None:
    put(tmp_path, "src/a.py", "a")
    one = Checkpoints(tmp_path, tmp_path / "state" / "shared.git", durable=False)
    two = Checkpoints(tmp_path, tmp_path / "state" / "shared.git", durable=False)
    _, full = pair(tmp_path)
    assert one.take() == full.take()
    put(tmp_path, "src/b.py", "b")
    assert two.take() == full.take()  # two's own first scan
    put(tmp_path, "src/c.py", "c")
    assert one.take() == full.take()  # b.py was never in one's events: a full scan
    assert one.full_scans == 2


def test_a_refused_partial_add_falls_back_to_a_full_scan(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(tmp_path, "src/a.py", "a")
    fast, full = pair(tmp_path)
    agree(fast, full)
    real = fast._run

    def refuse(args: tuple[str, ...], given: bytes | None = None, **kw: object) -> object:
        if args[0] == "add" and "-A" in args and given is not None:
            # A partial add: as if the directory vanished meanwhile.
            return subprocess.CompletedProcess(args, 128, b"", b"fatal: pathspec did not match")
        return real(args, given, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fast, "_run", refuse)
    put(tmp_path, "src/gen/out.txt", "x")
    agree(fast, full)
    assert (fast.full_scans, fast.partial_scans) == (2, 0)
    monkeypatch.setattr(fast, "_run", real)
    put(tmp_path, "src/gen/out.txt", "y")
    agree(fast, full)
    assert (fast.full_scans, fast.partial_scans) == (2, 1)


def test_a_named_ignored_path_is_left_out_like_a_full_scan_does(tmp_path: Path) -> None:
    put(tmp_path, ".gitignore", "*.log\n")
    put(tmp_path, "src/a.py", "a")
    fast, full = pair(tmp_path)
    agree(fast, full)
    for i in range(3):
        put(tmp_path, f"new{i}.log", "an ignored file at the top: git names it and goes on")
        put(tmp_path, "top.txt", str(i))
        agree(fast, full)
    assert fast.full_scans == 1


def test_tracking_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LORCH_CHECKPOINT_WATCH", "0")
    put(tmp_path, "src/a.py", "a")
    fast, full = pair(tmp_path)
    for i in range(3):
        put(tmp_path, "src/a.py", str(i))
        agree(fast, full)
    assert (fast.full_scans, fast.partial_scans) == (3, 0)


def test_rollback_with_tracking_restores_exactly(tmp_path: Path) -> None:
    put(tmp_path, "src/a.py", "a")
    fast, full = pair(tmp_path)
    pre = agree(fast, full)
    put(tmp_path, "src/a.py", "changed")
    put(tmp_path, "src/new/b.py", "new")
    agree(fast, full)
    fast.rollback(pre)
    assert not (tmp_path / "src/new/b.py").exists()
    assert agree(fast, full) == pre
    put(tmp_path, "src/a.py", "after the rollback")
    agree(fast, full)
    assert fast.full_scans == 1


def test_names_git_would_read_as_patterns_or_quote_are_taken_literally(tmp_path: Path) -> None:
    put(tmp_path, "src/a.py", "a")
    fast, full = pair(tmp_path)
    agree(fast, full)
    odd = ["*", ":(glob)x", "sp ace", "new\nline", 'qu"ote', "tab\there"]
    for name in odd:
        put(tmp_path, name, "top")
        put(tmp_path, f"src/{name}", "below")
    raw = os.fsdecode(b"not-utf8-\xff")
    (tmp_path / raw).write_bytes(b"raw name")
    agree(fast, full)
    for name in odd:
        (tmp_path / name).unlink()
    agree(fast, full)
    assert fast.full_scans == 1


def test_a_workspace_replaced_by_a_new_directory_is_scanned_whole(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    put(ws, "src/a.py", "a")
    fast = Checkpoints(ws, tmp_path / "fast.git", durable=False)
    first = fast.take()
    aside = tmp_path / "old"
    os.rename(ws, aside)
    shutil.copytree(aside, ws, symlinks=True)
    put(ws, "src/a.py", "changed in the copy")
    full = Checkpoints(ws, tmp_path / "full.git", durable=False, watch=False)
    assert fast.take() == full.take() != first
    assert fast.full_scans == 2


def test_the_engine_and_the_acp_transport_share_one_object_per_store(tmp_path: Path) -> None:
    store = tmp_path / "state" / "checkpoints.git"
    one = Checkpoints.shared(tmp_path, store)
    assert Checkpoints.shared(tmp_path, store) is one
    assert Checkpoints.shared(tmp_path, store, durable=False) is not one
