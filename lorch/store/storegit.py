"""The git that runs on the checkpoint store: a configuration lorch controls.

The store (``state/checkpoints.git``) lives in the workspace, where an agent
without a sandbox can write. Git reads behaviour from a repository's files:
``config`` (``core.fsmonitor``, ``core.hooksPath``, filter drivers, includes
are commands or paths), ``hooks/`` (``post-index-change`` runs on every index
write), ``info/exclude`` and ``info/attributes`` (what is held, which filter
runs), ``objects/info/alternates`` (objects read from elsewhere). None of the
store's copies is ever read (docs/storage.md, "What the store's git reads"):

- **No repository config, hooks or info from the store.** ``GIT_COMMON_DIR``
  names a private directory of this process, created with ``mkdtemp`` (0700,
  outside the workspace, an unpredictable name, in ``<tmp>/lorch-<uid>/``),
  holding only ``info/exclude``, ``info/attributes`` and an empty ``refs/``
  (and the ``lock`` its process holds while it lives: a later lorch removes
  the directories whose lock nobody holds, those of a killed lorch). Git
  takes the repository config, ``hooks/`` and ``info/`` from the common
  directory, so the store's own ``config``, ``hooks/``, ``info/``,
  ``commondir`` and ``config.worktree`` are never looked at (and are removed
  when found). The store keeps only what must persist: ``HEAD``, the index
  (``GIT_INDEX_FILE``) with its shared part, and the objects
  (``GIT_OBJECT_DIRECTORY``).
- **Every setting on the command line.** Each git gets lorch's whole
  configuration as ``-c`` options, which git reads after every file, with
  ``GIT_CONFIG_NOSYSTEM=1`` and ``GIT_CONFIG_GLOBAL=/dev/null``: even a
  configuration file planted in the private directory cannot change a key
  lorch sets (``core.fsmonitor``, ``core.hooksPath``, ...).
- **Checked before each git.** The private directory's files are compared
  with lorch's bytes (opened without following symlinks) and the directory
  rebuilt if anything differs or was added; in the store, ``objects/info/
  alternates`` and ``http-alternates`` are removed and ``HEAD`` rewritten if it
  is not lorch's, all under the store's flock.
- **An environment built from nothing**: ``PATH`` and ``LC_ALL`` and the
  variables lorch sets; no ``GIT_*`` variable of lorch's own environment
  (``GIT_DIR``, ``GIT_CONFIG_PARAMETERS``, ``GIT_EXEC_PATH``,
  ``GIT_ALTERNATE_OBJECT_DIRECTORIES``, ...) reaches it. ``HOME`` and
  ``XDG_CONFIG_HOME`` are the private directory.

What this does not give: the store's objects and index are data an agent that
can write the store can still corrupt (a rollback then fails on a bad object,
or restores what the agent put there). Keeping the store out of every agent's
reach is the sandbox's part (docs/security.md); this module makes sure that
writing there never makes lorch's git run anything.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import stat
import tempfile
import weakref
from pathlib import Path
from typing import Any

from lorch.store.layout import LORCH_DIRS, LORCH_FILES
from lorch.wire.errors import StorageError

# lorch's own directories and files at the top of the workspace: never part
# of a checkpoint, never touched by a rollback (lorch.json holds secrets).
EXCLUDED = LORCH_DIRS
EXCLUDED_FILES = LORCH_FILES

# info/exclude: lorch's paths (anchored at the root) and every hidden directory,
# at any depth. Hidden *files* (.gitignore, .env, ...) are part of the work.
EXCLUDE = (
    "".join(f"/{name}/\n" for name in EXCLUDED)
    + "".join(f"/{name}\n" for name in EXCLUDED_FILES)
    + ".*/\n"
)

# info/attributes has precedence over the workspace's .gitattributes: byte-exact
# content, whatever the user's attributes ask (no EOL conversion, no filters).
ATTRIBUTES = "* -text -eol -filter -ident -working-tree-encoding -diff -merge\n"

HEAD = b"ref: refs/heads/main\n"

CONFIG = {
    "core.repositoryformatversion": "0",
    "core.bare": "false",
    "core.filemode": "true",
    "core.symlinks": "true",
    "core.autocrlf": "false",
    "core.safecrlf": "false",
    "core.ignorecase": "false",
    "core.precomposeunicode": "false",
    "core.quotepath": "false",
    "core.hooksPath": os.devnull,
    "core.excludesFile": os.devnull,
    "core.attributesFile": os.devnull,
    "core.fsmonitor": "false",
    "core.sparseCheckout": "false",
    "index.sparse": "false",
    # The untracked cache is not used by `git add` (measured: no gain). A split
    # index rewrites only the entries that changed: about 10 ms less per take
    # at 10,000 files (bench/checkpoint.py).
    "core.untrackedCache": "false",
    "core.splitIndex": "true",
    "splitIndex.maxPercentChange": "20",
    "splitIndex.sharedIndexExpire": "now",
    "core.preloadIndex": "true",
    # Objects must be durable before a tree id reaches the ledger. The index is
    # only a cache of stat data: one lost or torn is rebuilt.
    "core.fsync": "loose-object",
    "core.fsyncMethod": "batch",
    "index.version": "4",
    "gc.auto": "0",
    "maintenance.auto": "false",
    "advice.addEmbeddedRepo": "false",
    "advice.addIgnoredFile": "false",
}

# Files git would read from the store were it the common directory, or reads
# from the object directory: removed wherever they appear.
_PLANTED = (
    "config",
    "config.worktree",
    "commondir",
    "hooks",
    "info",
    "objects/info/alternates",
    "objects/info/http-alternates",
)

_PRIVATE_FILES = {"info/exclude": EXCLUDE.encode(), "info/attributes": ATTRIBUTES.encode()}
# The private directory's entries: these and a scratch directory for rollbacks.
RULES = "rules"
# Held (flock) by the process the private directory belongs to, while it lives.
LOCK = "lock"


class StoreGit:
    """How to run git on ``store`` for ``workspace``: its argv prefix and environment."""

    def __init__(self, workspace: Path, store: Path, *, durable: bool) -> None:
        self.workspace = workspace
        self.store = store
        config = dict(CONFIG)
        if not durable:
            config["core.fsync"] = "none"
        self.argv = ["git"] + [arg for k, v in config.items() for arg in ("-c", f"{k}={v}")]
        self._private: Path | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    @property
    def private(self) -> Path:
        """The private common directory (valid after :meth:`guard`)."""
        if self._private is None:
            raise StorageError("checkpoints: the store's git is not set up")
        return self._private

    def env(self, work_tree: Path | None = None, **extra: str) -> dict[str, str]:
        private = str(self.private)
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "LC_ALL": "C",
            "HOME": private,
            "XDG_CONFIG_HOME": private,
            "GIT_DIR": str(self.store),
            "GIT_COMMON_DIR": private,
            "GIT_OBJECT_DIRECTORY": str(self.store / "objects"),
            "GIT_INDEX_FILE": str(self.store / "index"),
            "GIT_WORK_TREE": str(self.workspace if work_tree is None else work_tree),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_ATTR_NOSYSTEM": "1",
            "GIT_TERMINAL_PROMPT": "0",
            **extra,
        }

    def init(self) -> None:
        """The store's layout (no ``git init``: it would write a config and hooks)."""
        for d in (self.store / "objects", self.store / "refs"):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)

    def guard(self) -> None:
        """Before each git, under the store's flock: nothing planted is read."""
        if self._private is None or not self._private_intact(self._private):
            self._make_private()
        for rel in _PLANTED:
            _remove(self.store / rel)
        head = self.store / "HEAD"
        if _read_nofollow(head) != HEAD:
            _remove(head)
            fd = os.open(head, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, HEAD)
            finally:
                os.close(fd)

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
        self._private = None

    def rules_dir(self) -> Path:
        """An empty scratch directory in the private directory (a rollback's rules)."""
        path = self.private / RULES
        _remove(path)
        path.mkdir(mode=0o700)
        return path

    # -- internals -------------------------------------------------------------

    def _make_private(self) -> None:
        self.close()
        base = _private_base()
        # Made under a name the sweep passes over, locked, then renamed: a
        # directory named "git-*" is always locked while its lorch lives.
        made = Path(tempfile.mkdtemp(prefix="new-", dir=base))
        lock = os.open(made / LOCK, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        fcntl.flock(lock, fcntl.LOCK_EX)
        (made / "refs").mkdir(mode=0o700)
        (made / "info").mkdir(mode=0o700)
        for rel, data in _PRIVATE_FILES.items():
            fd = os.open(made / rel, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        path = made.with_name("git-" + made.name.removeprefix("new-"))
        os.rename(made, path)
        self._finalizer = weakref.finalize(self, _discard, path, lock)
        self._private = path
        _sweep(base, keep=path)

    @staticmethod
    def _private_intact(path: Path) -> bool:
        try:
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
                return False
            if set(os.listdir(path)) - {"refs", "info", RULES, LOCK} or os.listdir(path / "refs"):
                return False
            if set(os.listdir(path / "info")) != {"exclude", "attributes"}:
                return False
        except OSError:
            return False
        return all(_read_nofollow(path / rel) == data for rel, data in _PRIVATE_FILES.items())


def _private_base() -> Path:
    """``<tmp>/lorch-<uid>``, the user's own (0700); the temp dir itself if it is not."""
    tmp = Path(tempfile.gettempdir())
    base = tmp / f"lorch-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        base.mkdir(mode=0o700)
    try:
        st = os.lstat(base)
    except OSError:
        return tmp
    private = stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077
    return base if private else tmp  # another user's: then no sweep either (names differ)


def _sweep(base: Path, keep: Path) -> None:
    """Remove the private directories of lorch processes that have ended (a
    killed one leaves its own behind): those whose lock nobody holds."""
    if base == Path(tempfile.gettempdir()):
        return
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            path = base / name
            if not name.startswith("git-") or path == keep:
                continue
            try:
                fd = os.open(path / LOCK, os.O_RDWR | os.O_NOFOLLOW)
            except OSError:
                continue  # not one of ours as we make them: left alone
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue  # its lorch is alive
            _discard(path, fd)


def _discard(path: Path, lock: int) -> None:
    shutil.rmtree(path, ignore_errors=True)
    os.close(lock)


def _read_nofollow(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        return os.read(fd, 4096)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Remove ``path`` whatever it is, never following a symlink."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise StorageError(f"checkpoints: cannot inspect {path}: {e.strerror}") from e
    try:
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path)  # fd-based on Linux: does not follow symlinks inside
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    except OSError as e:
        raise StorageError(f"checkpoints: cannot remove {path}: {e.strerror}") from e
