"""Workspace checkpoints: exactly-once effects for agents that are not idempotent.

A checkpoint is the git tree id of the workspace (DESIGN.md §11, "Checkpoints").
It is written with git plumbing into a private git directory inside lorch's
state (``state/checkpoints.git`` by default) through its own index file, with
``GIT_DIR``, ``GIT_INDEX_FILE`` and ``GIT_WORK_TREE`` set and an environment
built from nothing, so that the user's ``.git``, index, HEAD, branches, hooks
and git configuration are never read or changed.

What a checkpoint holds: every file an agent's turn may change, verdict files
(``reviews/``, ``spec_notes/``) included, with its content, exec bit and
symlinks. Not held: any ``.git``, lorch's own directories (:data:`EXCLUDED`),
hidden directories (agents keep their private state there: ``.mockagent/``,
``.claude/``, ...), paths the workspace's ``.gitignore`` files ignore, and empty
directories (git tracks files). Those are neither captured nor restored.

Speed: ``take`` is ``git add -A`` and ``git write-tree``; the private index's
stat cache means only files whose stat changed are hashed again, and its split
index that only changed entries are written. After the first take of a process,
``git add`` is given only the directories that changed (``lorch/watch.py``:
inotify watches, read before git scans), so it no longer stats every file; a
full scan is made whenever the watches cannot tell, or the index is not the one
this object last left consistent with the workspace.

Durability: objects are fsynced (``core.fsync``, batched) before ``take``
returns, so a tree id that reaches the ledger can always be restored, power
loss included.

Crash safety of :meth:`Checkpoints.restore`: it first records the workspace as
it is (``add -A``), then moves it to the target tree (``read-tree --reset -u``,
which rewrites changed files and removes files the target lacks). A crash in
the middle leaves a workspace that is some mix of the two; running ``restore``
again records that mix and finishes the move, so it ends in the same state.
Git's lock files that a killed process leaves behind are cleared under an
``flock`` that only a live process can hold. Every git this module starts
holds that flock too (it inherits the descriptor): a git still running after
its lorch was killed keeps the store locked until it has exited, so the next
lorch waits for it instead of clearing a lock file it still uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import threading
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lorch.atomic import atomic_write_bytes, ensure_dir
from lorch.errors import StorageError
from lorch.transport import TurnCheckpoint
from lorch.watch import Dirty, Watch
from lorch.workflow import Pending, State

# lorch's own directories at the top of the workspace (DESIGN.md §4) and the
# mock agent's state: never part of a checkpoint.
EXCLUDED = ("events", "state", "receipts", "logs", "snapshots", "transcripts")

# Written to the private git dir's info/exclude: lorch's dirs (anchored at the
# root) and every hidden directory, at any depth. Hidden *files* (.gitignore,
# .env, ...) are part of the work and are kept.
_EXCLUDE = "".join(f"/{name}/\n" for name in EXCLUDED) + ".*/\n"

# info/attributes has precedence over the workspace's .gitattributes: byte-exact
# content, whatever the user's attributes ask (no EOL conversion, no filters).
_ATTRIBUTES = "* -text -eol -filter -ident -working-tree-encoding -diff -merge\n"

_CONFIG = {
    "core.repositoryformatversion": "0",
    "core.bare": "false",
    "core.filemode": "true",
    "core.symlinks": "true",
    "core.autocrlf": "false",
    "core.safecrlf": "false",
    "core.ignorecase": "false",
    "core.precomposeunicode": "false",
    "core.quotepath": "false",
    "core.hooksPath": "/dev/null",
    "core.excludesFile": "/dev/null",
    "core.attributesFile": "/dev/null",
    "core.fsmonitor": "false",
    # The untracked cache is not used by `git add` (measured: no gain). A split
    # index rewrites only the entries that changed: about 10 ms less per take
    # at 10,000 files (bench/checkpoint.py).
    "core.untrackedCache": "false",
    "core.splitIndex": "true",
    "splitIndex.maxPercentChange": "20",
    "splitIndex.sharedIndexExpire": "now",
    "core.preloadIndex": "true",
    # Objects must be durable before a tree id reaches the ledger. The index is
    # only a cache of stat data: one lost or torn is rebuilt (see _git).
    "core.fsync": "loose-object",
    "core.fsyncMethod": "batch",
    "index.version": "4",
    "gc.auto": "0",
    "maintenance.auto": "false",
    "advice.addEmbeddedRepo": "false",
    "advice.addIgnoredFile": "false",
}

_LOCKS = ("index.lock", "config.lock", "shallow.lock", "packed-refs.lock")

_SHARED: weakref.WeakValueDictionary[tuple[str, str, bool], Checkpoints] = (
    weakref.WeakValueDictionary()
)
_SHARED_LOCK = threading.Lock()

_FROM_STDIN = ("--pathspec-from-file=-", "--pathspec-file-nul")
_IGNORED_NAMED = b"The following paths are ignored by one of your .gitignore files:"


def _never_held(name: str, parent: str) -> bool:
    """Directories no checkpoint holds (the same rules as ``_EXCLUDE``): not watched."""
    return name.startswith(".") or (not parent and name in EXCLUDED)


def _stat(path: Path) -> tuple[int, int, int, int, bytes] | None:
    """Which index file this is: its stat data and git's checksum at its end
    (an inode number freed by one write can come back with the next)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            f.seek(max(0, st.st_size - 20))
            tail = f.read(20)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns, tail)


class Checkpoints:
    """Checkpoints of ``workspace`` kept in the private git directory ``store``."""

    @classmethod
    def shared(cls, workspace: Path, store: Path, *, durable: bool = True) -> Checkpoints:
        """The one object of this process for ``store`` while any holder keeps it:
        the engine and the ACP transport then share one set of watches and one
        view of the index (two would each find the other's index and scan all)."""
        key = (os.path.abspath(workspace), os.path.abspath(store), durable)
        with _SHARED_LOCK:
            ck = _SHARED.get(key)
            if ck is None:
                ck = _SHARED[key] = cls(workspace, store, durable=durable)
            return ck

    def __init__(
        self, workspace: Path, store: Path, *, durable: bool = True, watch: bool = True
    ) -> None:
        self.workspace = Path(workspace)
        self.store = Path(store)
        self.durable = durable
        self._index = self.store / "index"
        self._env = {
            "PATH": os.environ.get("PATH", os.defpath),
            "HOME": str(self.store),
            "XDG_CONFIG_HOME": str(self.store),
            "LC_ALL": "C",
            "GIT_DIR": str(self.store),
            "GIT_INDEX_FILE": str(self._index),
            "GIT_WORK_TREE": str(self.workspace),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "lorch",
            "GIT_AUTHOR_EMAIL": "lorch@localhost",
            "GIT_COMMITTER_NAME": "lorch",
            "GIT_COMMITTER_EMAIL": "lorch@localhost",
        }
        self._ready = False
        self._watch: Watch | None = Watch(self.workspace, _never_held) if watch else None
        # The index as this object last left it, equal to the workspace but for
        # the changes the watches have queued since; None: scan everything.
        self._index_seen: tuple[int, int, int, int, bytes] | None = None
        # The store's flock while this object holds it: every git started inherits it.
        self._held: int | None = None
        # How the index was brought up to date: every path, or the changed ones.
        self.full_scans = 0
        self.partial_scans = 0

    # -- public API -----------------------------------------------------------

    def take(self) -> str:
        """Record the workspace; return its tree id (40 hex digits)."""
        with self._locked():
            self._add_all()
            tree = self._git("write-tree").strip()
            self._still_ours()  # write-tree rewrites the index (its cache of trees)
            return tree

    def changed(self, old: str, new: str) -> list[str]:
        """Relative POSIX paths added, modified or deleted between two checkpoints."""
        with self._locked():
            return self._diff(old, new)

    def restore(self, tree: str) -> None:
        """Make the workspace equal to checkpoint ``tree`` (crash-safe; see module doc)."""
        self.rollback(tree)

    def rollback(self, tree: str) -> list[str]:
        """:meth:`restore`, returning the paths it rewrote, created or removed."""
        with self._locked():
            # The index must describe the workspace as it is now (new files
            # included) for read-tree to know what to rewrite and what to remove.
            self._add_all()
            try:
                out = self._git("diff-index", "--cached", "-z", "--no-renames", "--name-only", tree)
            except StorageError:
                raise StorageError(
                    f"{self.store}: checkpoint {tree} is not in the checkpoint store; "
                    "the workspace cannot be rolled back to it"
                ) from None
            paths = sorted(p for p in out.split("\0") if p)
            if paths:
                self._git("read-tree", "--reset", "-u", tree)
                self._still_ours()
                if self.durable:
                    self._sync(paths)
            return paths

    # -- internals -------------------------------------------------------------

    def close(self) -> None:
        """Stop tracking changes (the next take scans everything)."""
        if self._watch is not None:
            self._watch.close()
        self._index_seen = None

    def _add_all(self) -> None:
        """Bring the index up to the workspace: what changed when that is known, else all."""
        seen, self._index_seen = self._index_seen, None  # until this succeeds
        dirty = None
        if self._watch is not None and seen is not None and seen == _stat(self._index):
            dirty = self._watch.drain()
        if dirty is not None and self._add_some(dirty):
            self.partial_scans += 1
        else:
            self._add_everything()
            self.full_scans += 1
        self._index_seen = _stat(self._index)

    def _add_everything(self) -> None:
        # Watches first, then the scan: a change made meanwhile is in one or the other.
        tracking = self._watch is not None and self._watch.arm()
        self._git("add", "-A", "--", ".", rebuild=True)
        if tracking and self._watch is not None:
            self._watch.ignore(*self._ignored())
        elif self._watch is not None:
            self._watch = None  # no inotify, or its limits reached: full scans from now on

    def _ignored(self) -> tuple[list[str], list[str]]:
        """(directories, files) git ignores by a rule, not merely holding ignored files."""
        out = self._git(
            "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory"
        )
        listed = [p for p in out.split("\0") if p]
        files = [p for p in listed if not p.endswith("/")]
        # A directory is listed when all it holds is ignored: ask which are ignored
        # themselves (only those can go unwatched).
        dirs = [p.rstrip("/") for p in listed if p.endswith("/")]
        if not dirs:
            return [], files
        proc = self._run(
            ("check-ignore", "-z", "--stdin"),
            None,
            b"\0".join(os.fsencode(d) for d in dirs) + b"\0",
        )
        if proc.returncode not in (0, 1):  # then watch them all
            return [], files
        return [p for p in os.fsdecode(proc.stdout).split("\0") if p], files

    def _add_some(self, dirty: Dirty) -> bool:
        """``git add -A`` of the changed paths only; False if git refused (then scan all)."""
        env = dict(self._env, GIT_LITERAL_PATHSPECS="1")
        for args, paths in (
            (("add", "-A", *_FROM_STDIN), dirty.scan),
            (("rm", "--cached", "-r", "-q", "--ignore-unmatch", *_FROM_STDIN), dirty.gone),
        ):
            if paths:
                listed = b"\0".join(os.fsencode(p) for p in sorted(paths)) + b"\0"
                proc = self._run(args, env, listed)
                # Exit 1 with this message: a path named is one git ignores; it
                # added all the rest, as a full scan would have (git's add.c).
                if proc.returncode != 0 and not (
                    proc.returncode == 1 and proc.stderr.startswith(_IGNORED_NAMED)
                ):
                    return False
        return True

    def _still_ours(self) -> None:
        if self._index_seen is not None:
            self._index_seen = _stat(self._index)

    def _git(self, *args: str, env: dict[str, str] | None = None, rebuild: bool = False) -> str:
        proc = self._run(args, env)
        if proc.returncode != 0 and b"index file" in proc.stderr and self._index.exists():
            # A torn index (power loss): it is a cache, rebuilt by a full add,
            # which always comes first under the lock.
            self._index.unlink()
            if rebuild:
                proc = self._run(args, env)
        if proc.returncode != 0:
            err = os.fsdecode(proc.stderr).strip().splitlines()
            last = err[-1] if err else f"exit status {proc.returncode}"
            raise StorageError(f"checkpoints in {self.store}: git {args[0]} failed: {last}")
        return os.fsdecode(proc.stdout)

    def _run(
        self, args: tuple[str, ...], env: dict[str, str] | None, given: bytes | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        try:
            return subprocess.run(
                ["git", *args],
                cwd=self.workspace,
                env=self._env if env is None else env,
                input=given,
                stdin=subprocess.DEVNULL if given is None else None,
                capture_output=True,
                check=False,
                pass_fds=() if self._held is None else (self._held,),
            )
        except OSError as e:
            raise StorageError(f"checkpoints: cannot run git: {e.strerror}") from e

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        if not self.workspace.is_dir():
            raise StorageError(f"checkpoints: workspace {self.workspace} is not a directory")
        ensure_dir(self.store)
        fd = os.open(self.store / "lorch.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._held = fd  # one holder at a time: the flock excludes other threads too
            # Holding the flock, no live process of ours is inside git here: any
            # git lock file is the trace of a killed one.
            for name in _LOCKS:
                with contextlib.suppress(FileNotFoundError):
                    (self.store / name).unlink()
            for tmp in self.store.glob("sharedindex_*"):  # a shared index half written
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
            if not self._ready:
                self._init()
            yield
        finally:
            self._held = None
            os.close(fd)  # releases the flock

    def _init(self) -> None:
        if not (self.store / "HEAD").exists():
            env = {k: v for k, v in self._env.items() if k != "GIT_WORK_TREE"}
            self._git("init", "--quiet", "--bare", str(self.store), env=env)
        config = dict(_CONFIG)
        if not self.durable:
            config["core.fsync"] = "none"
        sections: dict[str, list[str]] = {}
        for key, value in config.items():
            section, name = key.split(".", 1)
            sections.setdefault(section, []).append(f"\t{name} = {value}\n")
        files = {
            "config": "".join(f"[{s}]\n" + "".join(lines) for s, lines in sections.items()),
            "info/exclude": _EXCLUDE,
            "info/attributes": _ATTRIBUTES,
        }
        # Temp files of a write of ours that a kill interrupted (we hold the flock).
        for d in (self.store, self.store / "info"):
            for tmp in d.glob(".*.tmp-*"):
                with contextlib.suppress(OSError):
                    tmp.unlink()
        # Written whole each time a store is opened, so no setting of ours can be
        # changed for good by anything that edits the store's files.
        for name, text in files.items():
            path = self.store / name
            ensure_dir(path.parent)
            try:
                current = path.read_text(encoding="utf-8")
            except OSError:
                current = None
            if current != text:
                atomic_write_bytes(path, text.encode("utf-8"))
        self._ready = True

    def _diff(self, old: str, new: str) -> list[str]:
        out = self._git("diff-tree", "-r", "-z", "--no-renames", "--name-only", old, new, "--")
        return sorted(p for p in out.split("\0") if p)

    def _sync(self, paths: list[str]) -> None:
        """fsync what a restore wrote or removed: those files and their directories."""
        dirs: set[Path] = set()
        for rel in paths:
            path = self.workspace / rel
            parent = path.parent
            while parent not in dirs:
                dirs.add(parent)
                if parent == self.workspace:
                    break
                parent = parent.parent
            if not path.is_symlink():
                _fsync(path, 0)
        for d in dirs:
            _fsync(d, os.O_DIRECTORY)


def _fsync(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | flags)
    except OSError:
        return  # removed, or its directory was: nothing there to sync
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- around commands (DESIGN.md §5.12) ---------------------------------------------

# Paths listed in a ledger record: the first ones, sorted; the count says how many.
LISTED = 100
STORE = Path("state") / "checkpoints.git"

Payload = dict[str, Any]


class TurnCheckpoints:
    """What the engine does around a command of a role lorch makes exactly-once.

    Both methods return the system records to append (``(event, payload)``);
    the engine appends them, so the ledger stays its only writer.
    """

    def __init__(self, workspace: Path, *, durable: bool = True) -> None:
        self.workspace = workspace
        self.durable = durable
        self._ck: Checkpoints | None = None
        # The last post checkpoint this process recorded (see before_send).
        self._post: str | None = None

    @property
    def checkpoints(self) -> Checkpoints:
        if self._ck is None:
            self._ck = Checkpoints.shared(
                self.workspace, self.workspace / STORE, durable=self.durable
            )
        return self._ck

    def close(self) -> None:
        if self._ck is not None:
            self._ck.close()

    def before_send(self, state: State, command: Payload) -> tuple[list[tuple[str, Payload]], str]:
        """Checkpoint before ``command`` is first sent, or roll back to that checkpoint.

        Call it only when no agent can be working on the command's key (at
        resume, after the crashed run's agents are ended). Returns the records
        to append before the command, and the checkpoint the command starts from.
        """
        ik = str(command["idempotency_key"])
        role = str(command["to"]["agent_type"])
        pre = state.pre_checkpoint(ik)
        if pre is None:
            # The workspace is the last post checkpoint's when that is the last
            # record and this process took it: no agent's turn, start, exit,
            # rejection or resume came between (docs/decisions.md D37).
            # Otherwise it is checkpointed again.
            tree = self._post if self._post is not None and state.tree_now == self._post else None
            if tree is None:
                tree = self.checkpoints.take()
            payload: Payload = {"role": role, "idempotency_key": ik, "phase": "pre", "tree": tree}
            return [("system.checkpoint", payload)], tree
        restored = self.checkpoints.rollback(pre)
        payload = {
            "role": role,
            "idempotency_key": ik,
            "tree": pre,
            "restored": restored[:LISTED],
            "restored_count": len(restored),
        }
        return [("system.rollback", payload)], pre

    def after_turn(
        self, pending: Pending, taken: TurnCheckpoint | None = None
    ) -> list[tuple[str, Payload]]:
        """The post-command checkpoint of an answered command (none if already recorded).

        ``taken``: the checkpoint the transport took when the turn ended (ACP,
        whose artifacts are the files changed up to it); recorded as it is.
        """
        if pending.pre is None or pending.post is not None:
            return []
        if taken is not None:
            post, changed = taken.tree, list(taken.changed)
        else:
            post = self.checkpoints.take()
            changed = self.checkpoints.changed(pending.pre, post)
        self._post = post
        payload: Payload = {
            "role": pending.role,
            "idempotency_key": pending.ik,
            "phase": "post",
            "tree": post,
            "changed": changed[:LISTED],
            "changed_count": len(changed),
        }
        return [("system.checkpoint", payload)]
