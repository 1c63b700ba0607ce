"""Workspace checkpoints (lorch/store/checkpoint.py): take, changed, restore."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorch.store.checkpoint import Checkpoints
from lorch.wire.errors import StorageError
from tests.conftest import examples


def ck(ws: Path) -> Checkpoints:
    return Checkpoints(ws, ws / "state" / "checkpoints.git", durable=False)


def tree_of(root: Path, *, skip: tuple[str, ...] = ("state",)) -> dict[str, tuple[str, bytes]]:
    """Every entry under root: kind + content (file bytes, link target), exec bit in the kind."""
    out: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in skip]
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            p = Path(dirpath, name)
            rel = os.path.normpath(os.path.join(rel_dir, name))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p).encode())
            else:
                exe = "x" if os.stat(p).st_mode & stat.S_IXUSR else "-"
                out[rel] = ("file" + exe, p.read_bytes())
    return out


def write(root: Path, rel: str, data: bytes | str, *, exe: bool = False) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    p.chmod(0o755 if exe else 0o644)


def test_take_changed_restore(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "a")
    write(tmp_path, "src/tool.sh", "#!/bin/sh\n", exe=True)
    write(tmp_path, "src/deep/x.py", "x = 1\n")
    write(tmp_path, ".env.example", "KEY=\n")
    os.symlink("a.txt", tmp_path / "link")
    c = ck(tmp_path)
    before_tree = tree_of(tmp_path)
    pre = c.take()
    assert len(pre) == 40 and c.take() == pre, "same workspace, same id"

    write(tmp_path, "a.txt", "changed")
    (tmp_path / "src/tool.sh").chmod(0o644)
    (tmp_path / "src/deep/x.py").unlink()
    write(tmp_path, "new/dir/made.txt", "new")
    write(tmp_path, "reviews/T-1.json", "{}")
    post = c.take()
    assert post != pre
    assert c.changed(pre, post) == [
        "a.txt",
        "new/dir/made.txt",
        "reviews/T-1.json",
        "src/deep/x.py",
        "src/tool.sh",
    ]
    assert c.changed(post, post) == []

    c.restore(pre)
    assert tree_of(tmp_path) == before_tree
    assert not (tmp_path / "new").exists(), "directories emptied by the rollback are removed"
    assert not (tmp_path / "reviews").exists()
    assert c.take() == pre
    assert c.rollback(pre) == [], "a second restore has nothing left to do"
    c.restore(post)
    assert (tmp_path / "new/dir/made.txt").read_text() == "new"


def test_lorch_dirs_hidden_dirs_and_ignored_paths_are_neither_captured_nor_restored(
    tmp_path: Path,
) -> None:
    write(tmp_path, ".gitignore", "build/\n*.o\n")
    write(tmp_path, "main.c", "int main;")
    c = ck(tmp_path)
    pre = c.take()
    kept = {
        "events/run-1.ndjson": "{}\n",
        "state/run.json": "{}",
        "receipts/T-1/step-1.json": "{}",
        "logs/builder/run-1.ndjson": "x",
        "snapshots/snap-1.manifest.json": "{}",
        "transcripts/run-1.txt": "t",
        ".mockagent/journal.ndjson": "j",
        "src/.cache/blob": "c",
        "build/out.bin": "b",
        "main.o": "o",
    }
    for rel, text in kept.items():
        write(tmp_path, rel, text)
    write(tmp_path, ".hidden-file", "h")
    assert c.changed(pre, c.take()) == [".hidden-file"], "hidden files are work; the rest is not"
    c.restore(pre)
    for rel, text in kept.items():
        assert (tmp_path / rel).read_text() == text, f"{rel} was touched by restore"
    assert not (tmp_path / ".hidden-file").exists()


def _digest_dir(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = oct(p.stat().st_mode)
    return out


def test_users_own_git_repo_config_and_env_are_never_read_or_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    # A global config and excludes file that would change what is captured,
    # and line-ending conversion that would change bytes on restore.
    (home / "ignore").write_text("*.txt\n")
    (home / ".gitconfig").write_text(
        f"[core]\n\texcludesFile = {home / 'ignore'}\n\tautocrlf = true\n"
        "[user]\n\tname = u\n\temail = u@x\n"
    )
    genv = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "xdg")}
    genv = {k: v for k, v in genv.items() if not k.startswith("GIT_")}

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=ws, env=genv, check=True, capture_output=True)

    git("init", "-q", "-b", "main")
    write(ws, "notes.txt", "line\r\nline\n")
    write(ws, ".gitattributes", "*.txt text eol=crlf\n")
    git("add", "-f", "notes.txt", ".gitattributes")
    git("commit", "-q", "-m", "first")
    git("checkout", "-q", "-b", "feature")
    write(ws, "staged.txt", "staged")
    git("add", "-f", "staged.txt")
    marker = tmp_path / "hook-ran"
    for hook in ("pre-commit", "post-checkout", "post-index-change", "reference-transaction"):
        write(ws, f".git/hooks/{hook}", f"#!/bin/sh\ntouch {marker}\n", exe=True)
    user_git = _digest_dir(ws / ".git")

    # The caller's environment points git at the user's repo: none of it may leak in.
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_DIR", str(ws / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(ws / ".git" / "index"))
    monkeypatch.setenv("GIT_WORK_TREE", str(tmp_path))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'core.excludesfile'='{home / 'ignore'}'")

    c = ck(ws)
    pre = c.take()
    write(ws, "notes.txt", "rewritten\n")
    write(ws, "added.txt", "added")
    post = c.take()
    assert c.changed(pre, post) == ["added.txt", "notes.txt"]
    c.restore(pre)
    assert (ws / "notes.txt").read_bytes() == b"line\r\nline\n", "bytes exact, no EOL conversion"
    assert not (ws / "added.txt").exists()
    assert _digest_dir(ws / ".git") == user_git, "the user's .git was changed"
    assert not marker.exists(), "a hook of the user's ran"
    status = subprocess.run(
        ["git", "status", "--porcelain", "--branch"],
        cwd=ws,
        env=genv,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert status.splitlines()[0] == "## feature"
    assert "A  staged.txt" in status


def test_stale_git_lock_from_a_killed_process_is_cleared(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "a")
    c = ck(tmp_path)
    pre = c.take()
    (tmp_path / "state/checkpoints.git/index.lock").write_bytes(b"half")
    (tmp_path / "state/checkpoints.git/sharedindex_Ab12Cd").write_bytes(b"half")
    write(tmp_path, "a.txt", "b")
    assert c.changed(pre, c.take()) == ["a.txt"]
    assert not list((tmp_path / "state/checkpoints.git").glob("sharedindex_*"))


def test_the_store_keeps_only_what_must_persist(tmp_path: Path) -> None:
    """No config, hooks or info in the store: its git takes them from a private
    directory (lorch/store/storegit.py). Those of a store made by an older lorch go."""
    store = tmp_path / "state/checkpoints.git"
    for rel in ("config", "hooks/pre-commit", "info/exclude", "description"):
        write(store, rel, "old")
    write(tmp_path, "a.txt", "a")
    ck(tmp_path).take()
    left = {p.name for p in store.iterdir()}
    assert {n for n in left if not n.startswith("sharedindex.")} == {
        "HEAD",
        "description",  # never read by git: left alone
        "index",
        "lorch.lock",
        "objects",
        "refs",
    }


@pytest.mark.parametrize("torn", ["index", "sharedindex.*"])
def test_torn_index_is_rebuilt(tmp_path: Path, torn: str) -> None:
    write(tmp_path, "a.txt", "a")
    c = ck(tmp_path)
    pre = c.take()
    write(tmp_path, "b.txt", "b")
    want = c.take()
    (tmp_path / "b.txt").unlink()
    assert c.take() == pre
    # The index is split (core.splitIndex): either part may be torn.
    (index,) = (tmp_path / "state/checkpoints.git").glob(torn)
    index.write_bytes(index.read_bytes()[:20])
    write(tmp_path, "b.txt", "b")
    assert Checkpoints(tmp_path, tmp_path / "state/checkpoints.git").take() == want


def test_unknown_checkpoint_is_one_clear_error(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "a")
    c = ck(tmp_path)
    c.take()
    with pytest.raises(StorageError, match=r"checkpoint 0{40} is not in the checkpoint store"):
        c.restore("0" * 40)
    assert (tmp_path / "a.txt").read_text() == "a"


def test_durable_store_restores_too(tmp_path: Path) -> None:
    write(tmp_path, "d/a.txt", "a")
    c = Checkpoints(tmp_path, tmp_path / "state" / "checkpoints.git")
    pre = c.take()
    write(tmp_path, "d/a.txt", "b")
    write(tmp_path, "e/f.txt", "f")
    assert c.rollback(pre) == ["d/a.txt", "e/f.txt"]
    assert (tmp_path / "d/a.txt").read_text() == "a" and not (tmp_path / "e").exists()


_RESTORE = """
import sys
from pathlib import Path
from lorch.store.checkpoint import Checkpoints
ws = Path(sys.argv[1])
Checkpoints(ws, ws / "state" / "checkpoints.git", durable=False).restore(sys.argv[2])
"""


def test_restore_killed_midway_then_restored_again_ends_in_the_same_state(
    tmp_path: Path,
) -> None:
    """SIGKILL restore (and its git) while it rewrites files, restore again: same end state."""
    partial_kills = 0
    for attempt in range(5):
        ws = tmp_path / f"ws{attempt}"
        n = 3000 * (attempt + 1)
        for i in range(n):
            write(ws, f"d{i % 30:02d}/f{i:05d}.txt", f"original {i}\n")
        c = ck(ws)
        pre = c.take()
        want = tree_of(ws)
        for i in range(n):
            write(ws, f"d{i % 30:02d}/f{i:05d}.txt", f"edited {i}\n")
        write(ws, "created/by/turn.txt", "new")
        first = ws / "d00/f00000.txt"
        last = ws / f"d29/f{n - 1:05d}.txt" if n % 30 == 0 else ws / "d29/f00029.txt"
        proc = subprocess.Popen(
            [sys.executable, "-c", _RESTORE, str(ws), pre], start_new_session=True
        )
        try:
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                if _starts(first, b"original"):
                    break
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if _starts(last, b"edited"):
            partial_kills += 1
        c.restore(pre)
        assert tree_of(ws) == want
        if partial_kills:
            break
    assert partial_kills, "no attempt caught restore in the middle"


def _starts(path: Path, prefix: bytes) -> bool:
    try:
        return path.read_bytes().startswith(prefix)
    except FileNotFoundError:
        return False  # git is between unlinking and writing it


def test_restore_from_a_hand_made_crash_state(tmp_path: Path) -> None:
    """What a kill inside read-tree leaves: index.lock, an old index, files half moved."""
    for i in range(20):
        write(tmp_path, f"f{i:02d}.txt", f"v1 {i}")
    c = ck(tmp_path)
    pre = c.take()
    want = tree_of(tmp_path)
    for i in range(20):
        write(tmp_path, f"f{i:02d}.txt", f"v2 {i}")
    write(tmp_path, "made.txt", "m")
    c.take()  # the index now describes the edited workspace
    # Half the files already rolled back, one cut short, the created file removed.
    for i in range(10):
        write(tmp_path, f"f{i:02d}.txt", f"v1 {i}")
    write(tmp_path, "f10.txt", "v")
    (tmp_path / "made.txt").unlink()
    (tmp_path / "state/checkpoints.git/index.lock").write_bytes(b"DIRC")
    c.restore(pre)
    assert tree_of(tmp_path) == want


_names = st.sampled_from(["a", "b", "c.txt", "d.py", "e e", "ü", "x-1"])
_paths = st.lists(_names, min_size=1, max_size=3).map("/".join)
_content = st.binary(max_size=64)
_files = st.dictionaries(_paths, st.tuples(_content, st.booleans()), max_size=12)


def _lay(root: Path, files: dict[str, tuple[bytes, bool]]) -> dict[str, tuple[bytes, bool]]:
    laid: dict[str, tuple[bytes, bool]] = {}
    for rel, (data, exe) in sorted(files.items()):
        p = root / rel
        # A path whose parent is already a file (or whose name is a dir) is skipped.
        if any((root / q).is_file() for q in _parents(rel)) or p.is_dir():
            continue
        write(root, rel, data, exe=exe)
        laid[rel] = (data, exe)
    return laid


def _parents(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]


@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    start=_files,
    edits=st.lists(
        st.tuples(st.sampled_from(["write", "delete", "chmod", "mkdir-over"]), _paths, _content),
        max_size=10,
    ),
)
def test_restore_after_arbitrary_edits_gives_back_the_exact_tree(
    start: dict[str, tuple[bytes, bool]], edits: list[tuple[str, str, bytes]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        _lay(root, start)
        c = ck(root)
        want = tree_of(root)
        pre = c.take()
        for op, rel, data in edits:
            p = root / rel
            try:
                if op == "write":
                    for q in _parents(rel):
                        if (root / q).is_file():
                            (root / q).unlink()
                    if p.is_dir():
                        continue
                    write(root, rel, data)
                elif op == "delete" and p.is_file():
                    p.unlink()
                elif op == "chmod" and p.is_file():
                    p.chmod(p.stat().st_mode ^ 0o111)
                elif op == "mkdir-over" and p.is_file():
                    p.unlink()
                    write(root, rel + "/inner", data)
            except (FileExistsError, NotADirectoryError, IsADirectoryError):
                continue
        mid = c.take()
        assert (c.changed(pre, mid) == []) == (tree_of(root) == want)
        c.restore(pre)
        assert tree_of(root) == want
        assert c.take() == pre


def test_files_made_right_after_a_take_are_in_the_next_one(tmp_path: Path) -> None:
    # A file created or removed in the same clock tick as the last take must
    # still be seen (the index's stat data must not be trusted for it). Many
    # rounds, as fast as possible, so that some land in the same tick.
    c = ck(tmp_path)
    write(tmp_path, "src/keep.txt", b"keep")
    c.take()
    for i in range(60):
        write(tmp_path, f"src/new{i}.txt", b"x")
        after = c.take()
        (tmp_path / f"src/new{i}.txt").unlink()
        gone = c.take()
        assert c.changed(after, gone) == [f"src/new{i}.txt"]
        write(tmp_path, f"src/new{i}.txt", b"x")
        assert c.take() == after
        (tmp_path / f"src/new{i}.txt").unlink()
        assert c.take() == gone


def test_a_git_left_running_by_a_killed_lorch_keeps_the_store_locked(tmp_path: Path) -> None:
    """SIGKILL the process taking a checkpoint while its git runs: that git holds
    the store's flock until it has exited, so no other process clears its lock
    files meanwhile (a hang here is pytest-timeout's to report)."""
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("a\n")
    store = ws / "state" / "checkpoints.git"
    ck(ws).take()
    (ws / "a.txt").write_text("changed\n")
    # A git that names itself, waits at the gate, then is the real git.
    fake, gate, pid_file = tmp_path / "bin", tmp_path / "gate", tmp_path / "git.pid"
    fake.mkdir()
    os.mkfifo(gate)
    real = shutil.which("git")
    (fake / "git").write_text(
        f'#!/bin/sh\necho $$ > "{pid_file}"\nread _ < "{gate}"\nexec "{real}" "$@"\n'
    )
    (fake / "git").chmod(0o755)
    code = (
        "import sys; from pathlib import Path; from lorch.store.checkpoint import Checkpoints; "
        "Checkpoints(Path(sys.argv[1]), Path(sys.argv[2]), durable=False).take()"
    )
    taker = subprocess.Popen(
        [sys.executable, "-c", code, str(ws), str(store)],
        env={**os.environ, "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"},
    )
    lock = os.open(store / "lorch.lock", os.O_RDWR)
    try:
        with open(gate, "w") as opened:  # returns once the fake git waits at the gate
            taker.kill()
            taker.wait()
            pidfd = os.pidfd_open(int(pid_file.read_text()))
            with pytest.raises(BlockingIOError):  # its git still holds the flock
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            opened.write("go\n")
        select.select([pidfd], [], [])  # until the orphaned git has exited
        os.close(pidfd)
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)  # which let it go
    finally:
        os.close(lock)


# -- what a rollback may delete: only what the checkpoint's own rules do not ignore --


def test_rollback_keeps_what_the_checkpoints_rules_ignore_whatever_the_turn_wrote(
    tmp_path: Path,
) -> None:
    """The turn un-ignores the user's files (rules rewritten, a negation added
    below): the rollback judges by the checkpoint's rules, so they stay."""
    write(tmp_path, ".gitignore", "*.db\nbuild/\n")
    write(tmp_path, "src/.gitignore", "*.tmp\n")
    write(tmp_path, "src/main.py", "main")
    user = {"data/local.db": "rows", "build/out.bin": "bin", "src/scratch.tmp": "t"}
    for rel, text in user.items():
        write(tmp_path, rel, text)
    c = ck(tmp_path)
    pre = c.take()
    assert c.changed(pre, pre) == []

    write(tmp_path, ".gitignore", "")
    (tmp_path / "src/.gitignore").unlink()
    write(tmp_path, "data/.gitignore", "!local.db\n")
    write(tmp_path, "src/main.py", "edited")
    write(tmp_path, "made.txt", "by the turn")
    write(tmp_path, "data/made.db", "by the turn, ignored by the old rules")
    c.take()  # the turn's end: the index now holds the user's files
    restored = c.rollback(pre)

    for rel, text in user.items():
        assert (tmp_path / rel).read_text() == text, f"{rel} was touched"
    assert (tmp_path / ".gitignore").read_text() == "*.db\nbuild/\n"
    assert (tmp_path / "src/.gitignore").read_text() == "*.tmp\n"
    assert (tmp_path / "src/main.py").read_text() == "main"
    assert not (tmp_path / "made.txt").exists()
    assert not (tmp_path / "data/.gitignore").exists()
    # Ignored by the checkpoint's rules: lorch cannot know the turn made it.
    assert (tmp_path / "data/made.db").exists()
    assert restored == [
        ".gitignore",
        "data/.gitignore",
        "made.txt",
        "src/.gitignore",
        "src/main.py",
    ]
    assert c.take() == pre


def test_rollback_deletes_what_the_turn_hid_behind_rules_of_its_own(tmp_path: Path) -> None:
    write(tmp_path, ".gitignore", "*.db\n")
    write(tmp_path, "keep.txt", "k")
    c = ck(tmp_path)
    pre = c.take()
    write(tmp_path, ".gitignore", "*.db\nhidden/\n*.log\n")
    write(tmp_path, "hidden/payload.txt", "p")
    write(tmp_path, "deep/er/run.log", "l")
    write(tmp_path, "deep/er/.gitignore", "*\n")  # ignores itself and all beside it
    write(tmp_path, "deep/er/more.txt", "m")
    assert c.rollback(pre) == [
        ".gitignore",
        "deep/er/.gitignore",
        "deep/er/more.txt",
        "deep/er/run.log",
        "hidden/payload.txt",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".gitignore", "keep.txt", "state"]


def test_an_ignore_file_that_ignores_itself_is_held_and_keeps_protecting(tmp_path: Path) -> None:
    """``venv/.gitignore`` holding ``*`` (what ``python -m venv`` writes) is not
    tracked by a plain ``git add -A``; a checkpoint holds it, so a turn that
    removes it cannot make the rollback delete the venv."""
    write(tmp_path, "venv/.gitignore", "*\n")
    write(tmp_path, "venv/lib/site.py", "s")
    write(tmp_path, "app.py", "a")
    c = ck(tmp_path)
    pre = c.take()
    (tmp_path / "venv/.gitignore").unlink()
    write(tmp_path, "venv/lib/new.py", "made by the turn, under the old rules ignored")
    assert c.rollback(pre) == ["venv/.gitignore"]
    assert (tmp_path / "venv/.gitignore").read_text() == "*\n"
    assert (tmp_path / "venv/lib/site.py").read_text() == "s"


def test_a_directory_arriving_with_its_own_ignore_file_is_scanned_whole(tmp_path: Path) -> None:
    c = ck(tmp_path)
    write(tmp_path, "a.txt", "a")
    c.take()
    made = tmp_path / "made"
    write(tmp_path, "staging/.gitignore", "*\n")
    write(tmp_path, "staging/x.txt", "x")
    os.rename(tmp_path / "staging", made)
    full = Checkpoints(tmp_path, tmp_path / "state" / "full.git", durable=False, watch=False)
    tree = c.take()
    assert tree == full.take()
    held = _store_git(tmp_path / "state/checkpoints.git", "ls-tree", "-r", "--name-only", tree)
    assert held.decode().split() == ["a.txt", "made/.gitignore"]


def test_lorch_json_is_never_held_nor_touched_by_a_rollback(tmp_path: Path) -> None:
    """lorch.json holds secrets (``env``): not in any checkpoint; a rollback to
    a tree that holds it (a store written by an older lorch) leaves it alone."""
    write(tmp_path, "lorch.json", '{"env": {"API_KEY": "k-123"}}')
    write(tmp_path, "src/a.py", "a")
    c = ck(tmp_path)
    pre = c.take()
    store = tmp_path / "state/checkpoints.git"
    assert b"k-123" not in _all_objects(store)
    write(tmp_path, "lorch.json", '{"env": {"API_KEY": "k-456"}}')
    assert c.changed(pre, c.take()) == []
    old = _tree_with(store, pre, "lorch.json", b'{"env": {"API_KEY": "k-000"}}')
    write(tmp_path, "src/a.py", "edited")
    assert c.rollback(old) == ["src/a.py"]
    assert (tmp_path / "lorch.json").read_text() == '{"env": {"API_KEY": "k-456"}}'
    (tmp_path / "lorch.json").unlink()
    assert c.rollback(old) == []
    assert not (tmp_path / "lorch.json").exists()


def _store_git(store: Path, *args: str, given: bytes | None = None) -> bytes:
    env = {"PATH": os.environ["PATH"], "GIT_DIR": str(store), "GIT_CONFIG_NOSYSTEM": "1"}
    env["GIT_CONFIG_GLOBAL"] = os.devnull
    return subprocess.run(
        ["git", *args], env=env, input=given, capture_output=True, check=True
    ).stdout


def _all_objects(store: Path) -> bytes:
    return _store_git(store, "cat-file", "--batch-all-objects", "--batch")


def _tree_with(store: Path, tree: str, name: str, data: bytes) -> str:
    blob = _store_git(store, "hash-object", "-w", "--stdin", given=data).strip()
    listing = _store_git(store, "ls-tree", tree) + b"100644 blob " + blob + b"\t" + name.encode()
    return _store_git(store, "mktree", given=listing + b"\n").decode().strip()


# -- the store's git: a configuration lorch controls ---------------------------------


def _tripwire(tmp_path: Path) -> tuple[Path, Path]:
    """A script that records each run in a marker file (and passes stdin through)."""
    marker = tmp_path / "ran"
    script = tmp_path / "evil.sh"
    script.write_text(f'#!/bin/sh\necho "$0 $*" >> "{marker}"\ncat\n')
    script.chmod(0o755)
    return script, marker


def test_config_hooks_filters_and_alternates_planted_in_the_store_never_run(
    tmp_path: Path,
) -> None:
    ws = tmp_path / "ws"
    write(ws, "a.txt", "a")
    c = ck(ws)
    pre = c.take()
    script, marker = _tripwire(tmp_path)
    store = ws / "state/checkpoints.git"
    elsewhere = tmp_path / "elsewhere/objects"
    elsewhere.mkdir(parents=True)
    planted_config = (
        f"[core]\n\tfsmonitor = {script}\n\thooksPath = {store / 'hooks'}\n"
        f'\tsplitIndex = false\n[filter "evil"]\n\tclean = {script}\n'
        f"\tsmudge = {script}\n\tprocess = {script}\n[include]\n\tpath = {tmp_path / 'inc'}\n"
    )
    (tmp_path / "inc").write_text(f"[core]\n\tfsmonitor = {script}\n")
    write(store, "config", planted_config)
    write(store, "info/attributes", "* filter=evil\n")
    write(store, "info/exclude", "*.txt\n")
    for hook in ("post-index-change", "pre-commit", "post-checkout", "fsmonitor-watchman"):
        write(store, f"hooks/{hook}", script.read_text(), exe=True)
    write(store, "objects/info/alternates", str(elsewhere) + "\n")
    write(ws, ".gitattributes", "* filter=evil\n")
    write(ws, "a.txt", "edited")
    write(ws, "b.txt", "b")
    post = c.take()
    assert c.changed(pre, post) == [".gitattributes", "a.txt", "b.txt"]
    assert c.rollback(pre) == [".gitattributes", "a.txt", "b.txt"]
    assert (ws / "a.txt").read_text() == "a"
    assert not marker.exists(), f"lorch's git ran a planted command: {marker.read_text()}"
    for rel in ("config", "info", "hooks", "objects/info/alternates"):
        assert not (store / rel).exists(), rel
    # A common directory named from the store, with a config of its own.
    write(tmp_path, "elsewhere/config", planted_config)
    write(store, "commondir", str(tmp_path / "elsewhere"))
    write(store, "config.worktree", planted_config)
    write(ws, "a.txt", "again")
    assert c.changed(pre, c.take()) == ["a.txt"]
    assert not marker.exists(), f"lorch's git ran a planted command: {marker.read_text()}"
    assert not (store / "commondir").exists() and not (store / "config.worktree").exists()


def test_a_config_planted_in_the_private_directory_changes_nothing(tmp_path: Path) -> None:
    """Even there (outside the workspace): every key lorch sets comes from the
    command line, which git reads last, and the directory is rebuilt."""
    write(tmp_path, "a.txt", "a")
    c = ck(tmp_path)
    c.take()
    script, marker = _tripwire(tmp_path)
    private = c._git_setup.private
    (private / "config").write_text(f"[core]\n\tfsmonitor = {script}\n")
    (private / "info/exclude").write_text("*.txt\n")
    write(tmp_path, "b.txt", "b")
    assert "b.txt" in _store_git(tmp_path / "state/checkpoints.git", "ls-tree", c.take()).decode()
    assert not marker.exists()
    assert c._git_setup.private != private and not private.exists()


def test_git_variables_of_lorchs_environment_never_reach_the_store_git(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    script, marker = _tripwire(tmp_path)
    trace = tmp_path / "trace"
    fake_exec = tmp_path / "exec"
    fake_exec.mkdir()
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'core.fsmonitor'='{script}'")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.fsmonitor")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", str(script))
    monkeypatch.setenv("GIT_TRACE", str(trace))
    monkeypatch.setenv("GIT_EXEC_PATH", str(fake_exec))  # no git-* helpers there
    monkeypatch.setenv("GIT_OBJECT_DIRECTORY", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_ALTERNATE_OBJECT_DIRECTORIES", str(tmp_path / "elsewhere"))
    write(tmp_path / "ws", "a.txt", "a")
    c = ck(tmp_path / "ws")
    pre = c.take()
    write(tmp_path / "ws", "a.txt", "b")
    assert c.rollback(pre) == ["a.txt"]
    assert not marker.exists() and not trace.exists()
    assert not (tmp_path / "elsewhere").exists()


_DIRS = ["", "data", "src", "src/deep"]
_FILES = st.sampled_from(
    [f"{d}/{n}" if d else n for d in _DIRS for n in ("a.txt", "b.db", "c.log")]
)
_RULES = st.sampled_from(["", "*.db\n", "*.log\n!c.log\n", "*\n", "!b.db\n", "deep/\n", "*.txt\n"])
_RULE_FILES = st.sampled_from([".gitignore", "data/.gitignore", "src/.gitignore"])


@settings(
    max_examples=examples(30),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    rules=st.dictionaries(_RULE_FILES, _RULES, max_size=3),
    start=st.sets(_FILES, max_size=8),
    turn_rules=st.dictionaries(_RULE_FILES, st.one_of(st.none(), _RULES), max_size=3),
    made=st.sets(_FILES, max_size=6),
    edited=st.sets(_FILES, max_size=4),
)
def test_a_rollback_deletes_exactly_what_the_checkpoints_rules_do_not_ignore(
    rules: dict[str, str],
    start: set[str],
    turn_rules: dict[str, str | None],
    made: set[str],
    edited: set[str],
) -> None:
    """Whatever rules the turn writes: every file there before the turn is back
    as it was (held, or ignored and left alone by the turn), and a fresh
    checkpoint equals the old one (no file the old rules would hold is left)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for rel, text in rules.items():
            write(root, rel, text)
        for rel in start:
            write(root, rel, f"user {rel}")
        c = ck(root)
        pre = c.take()
        before = tree_of(root)
        held = set(
            _store_git(root / "state/checkpoints.git", "ls-tree", "-r", "--name-only", pre)
            .decode()
            .split()
        )
        for rel, rule in turn_rules.items():
            if rule is None:
                with contextlib.suppress(FileNotFoundError):
                    (root / rel).unlink()
            else:
                write(root, rel, rule)
        for rel in edited & held:
            write(root, rel, "edited by the turn")
        for rel in made - start:
            write(root, rel, "made by the turn")
        c.rollback(pre)
        after = tree_of(root)
        # Back as it was: every held file, and every other the turn left alone
        # (an ignored file the turn itself changed was never held: it is lost).
        touched = set(turn_rules) | made | edited
        kept = {k: v for k, v in before.items() if k in held or k not in touched}
        assert {k: v for k, v in after.items() if k in kept} == kept
        assert c.take() == pre


_KILLED_TAKE = """
import os, sys
from pathlib import Path
from lorch.store.checkpoint import Checkpoints
c = Checkpoints(Path(sys.argv[1]), Path(sys.argv[1]) / "state" / "checkpoints.git", durable=False)
c.take()
print(c._git_setup.private, flush=True)
os.kill(os.getpid(), 9)
"""


def test_the_private_directory_of_a_killed_lorch_is_removed_by_the_next(tmp_path: Path) -> None:
    write(tmp_path, "a.txt", "a")
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_TAKE, str(tmp_path)], capture_output=True, text=True
    )
    assert killed.returncode == -signal.SIGKILL
    left = Path(killed.stdout.strip())
    assert left.is_dir(), "a killed process cleans nothing up"
    c = ck(tmp_path)
    c.take()
    mine = c._git_setup.private
    assert not left.exists()
    assert mine.parent == left.parent and mine.is_dir()
    # A live one's is never taken: its lock is held.
    other = ck(tmp_path)
    other.take()
    assert mine.is_dir() and other._git_setup.private.is_dir()
    c.close()
    assert not mine.exists(), "a closed store's git leaves nothing behind"


def test_a_spare_checkpoints_ignore_rules_keep_what_they_ignore(tmp_path: Path) -> None:
    """``lorch rewind``: a file ignored just before the rewind is never removed, even
    when the checkpoint restored has no rule for it; what no rule ignores goes."""
    write(tmp_path, "src/app.py", "v1")
    c = ck(tmp_path)
    target = c.take()
    write(tmp_path, ".gitignore", "*.log\nbuild/\n")
    write(tmp_path, "run.log", "the user's log")
    write(tmp_path, "build/out/x.o", "obj")
    write(tmp_path, "notes.txt", "made later")
    write(tmp_path, "src/app.py", "v2")
    saved = c.take()
    assert c.rollback(target, spare=saved) == [".gitignore", "notes.txt", "src/app.py"]
    assert (tmp_path / "src/app.py").read_text() == "v1"
    assert not (tmp_path / ".gitignore").exists() and not (tmp_path / "notes.txt").exists()
    assert (tmp_path / "run.log").read_text() == "the user's log"
    assert (tmp_path / "build/out/x.o").read_text() == "obj"
    # Without the spare, the restored checkpoint's rules alone judge: both go.
    c.restore(saved)
    assert (tmp_path / "notes.txt").is_file() and (tmp_path / ".gitignore").is_file()
    assert c.rollback(target) == [
        ".gitignore",
        "build/out/x.o",
        "notes.txt",
        "run.log",
        "src/app.py",
    ]
    assert not (tmp_path / "run.log").exists()
