"""Workspace checkpoints: exactly-once effects for agents that are not idempotent.

A checkpoint is the git tree id of the workspace (DESIGN.md §11, "Checkpoints").
It is written with git plumbing into a private store inside lorch's state
(``state/checkpoints.git`` by default) through its own index file, by a git
whose configuration lorch alone sets (``lorch/store/storegit.py``: no config, hooks
or info of the store's is read, no ``GIT_*`` variable of lorch's environment
passes), so that the user's ``.git``, index, HEAD, branches, hooks and git
configuration are never read or changed, and nothing planted in the store runs.

What a checkpoint holds: every file an agent's turn may change, verdict files
(``reviews/``, ``spec_notes/``) included, with its content, exec bit and
symlinks, and every ``.gitignore`` git reads (one that ignores itself too: a
checkpoint carries the ignore rules in force when it was taken). Not held: any
``.git``, lorch's own paths (:data:`EXCLUDED`, ``lorch.json``: it holds
secrets), hidden directories (agents keep their private state there:
``.mockagent/``, ``.claude/``, ...), paths the workspace's ``.gitignore`` files
ignore, and empty directories (git tracks files). The user's
``.git/info/exclude`` and ``core.excludesFile`` are not consulted: a file only
they ignore is held.

What a rollback undoes (:meth:`Checkpoints.rollback`): held files are written
back; a path the checkpoint does not hold is deleted only when the
checkpoint's own ignore rules do not ignore it, since an ignored file was never
held and may be the user's. lorch's own paths are never touched.

Speed: ``take`` is ``git add -A`` and ``git write-tree``; the private index's
stat cache means only files whose stat changed are hashed again, and its split
index that only changed entries are written. After the first take of a process,
``git add`` is given only the directories that changed (``lorch/store/watch.py``:
inotify watches, read before git scans), so it no longer stats every file; a
full scan is made whenever the watches cannot tell, or the index is not the one
this object last left consistent with the workspace.

Durability: objects are fsynced (``core.fsync``, batched) before ``take``
returns, so a tree id that reaches the ledger can always be restored, power
loss included.

Crash safety of :meth:`Checkpoints.restore`: it sets the index to the target
tree (keeping stat data), writes the tree's ignore files back first, then
moves the workspace to the tree (``read-tree --reset -u``, which rewrites
changed files and removes the files it was told the turn made). A crash in the
middle leaves a workspace that is some mix of the two; running ``restore``
again judges that mix by the same rules and finishes the move, so it ends in
the same state. Git's lock files that a killed process leaves behind are
cleared under an ``flock`` that only a live process can hold. Every git this
module starts
holds that flock too (it inherits the descriptor): a git still running after
its lorch was killed keeps the store locked until it has exited, so the next
lorch waits for it instead of clearing a lock file it still uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import subprocess
import threading
import weakref
from collections.abc import Iterable, Iterator
from pathlib import Path

from lorch.store.atomic import ensure_dir
from lorch.store.layout import CHECKPOINT_STORE
from lorch.store.storegit import EXCLUDED, EXCLUDED_FILES, StoreGit
from lorch.store.watch import Dirty, Watch
from lorch.wire.errors import StorageError

_LOCKS = ("index.lock", "config.lock", "shallow.lock", "packed-refs.lock")

_SHARED: weakref.WeakValueDictionary[tuple[str, str, bool], Checkpoints] = (
    weakref.WeakValueDictionary()
)
_SHARED_LOCK = threading.Lock()

_FROM_STDIN = ("--pathspec-from-file=-", "--pathspec-file-nul")
_IGNORED_NAMED = b"The following paths are ignored by one of your .gitignore files:"
_OID = re.compile(r"[0-9a-f]{40}")
# The empty blob: the index entry of a file a rollback removes (never read).
_EMPTY_BLOB = b"e69de29bb2d1d6434b8b29ae775ad8c2e48c5391"

__all__ = ["EXCLUDED", "EXCLUDED_FILES", "STORE", "Checkpoints"]

# The private store, relative to the workspace.
STORE = CHECKPOINT_STORE


def _never_held(name: str, parent: str) -> bool:
    """Directories no checkpoint holds (the same rules as ``storegit.EXCLUDE``): not watched."""
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
        self._git_setup = StoreGit(self.workspace, self.store, durable=durable)
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

    def rollback(self, tree: str, *, spare: str | None = None) -> list[str]:
        """:meth:`restore`, returning the paths it rewrote, created or removed.

        Only what the turn did is undone (docs/storage.md, "What a rollback
        deletes"): files held by ``tree`` are written back, and a path that is
        not in ``tree`` is deleted only if ``tree``'s own ignore rules do not
        ignore it. An ignored file was never held, so lorch cannot know whether
        the turn made it: it stays. The workspace's ignore files now are the
        turn's and are never consulted; ``tree``'s are written back first.

        ``spare``: another checkpoint whose ignore rules protect a path too
        (``lorch rewind``: the workspace's rules before the rewind, which its
        own checkpoint recorded; they are read from the store, so a rewind cut
        short and run again judges by the same rules).
        """
        with self._locked():
            # An index this object left consistent with the workspace stays so
            # (the watches hold what changed since, this rollback included);
            # until the rollback ends, or if it was not, the next take scans all.
            trusted = self._index_seen is not None and self._index_seen == _stat(self._index)
            self._index_seen = None
            if self._object_type(tree) != "tree":
                raise StorageError(
                    f"{self.store}: checkpoint {tree} is not in the checkpoint store; "
                    "the workspace cannot be rolled back to it"
                )
            # The index becomes the tree, keeping the stat data of entries whose
            # content is the same, then learns which files differ from it.
            self._git("read-tree", "--reset", tree, rebuild=True)
            self._run(("update-index", "-q", "--refresh"), None)
            held = self._listed("ls-files", "-z")
            target, held = self._without_lorch_paths(tree, held)
            changed = self._listed("diff-files", "-z", "--name-only", "--no-renames")
            # Judged before anything is written, by the tree's rules alone.
            made = self._made_by_turn(held, changed, [p for p in held if _is_rules(p)])
            if spare is not None and made:
                made = self._spared(made, spare)
            # The first files written back are the tree's ignore files: a
            # rollback cut short leaves the pre-turn rules, if anything, behind.
            first = [p for p in changed if _is_rules(p)]
            if first:
                self._given(("checkout-index", "-f", "-z", "--stdin"), first)
            paths = sorted(set(changed) | set(made))
            if paths:
                # Files the turn made join the index so that read-tree removes them.
                entries = b"".join(
                    b"%s blob %s\t%s\0" % (mode, _EMPTY_BLOB, os.fsencode(p))
                    for p, mode in made.items()
                    if mode
                )
                if entries:
                    self._run_ok(("update-index", "-z", "--index-info"), entries)
                self._git("read-tree", "--reset", "-u", target)
                if self.durable:
                    self._sync(paths)
            if trusted:
                self._index_seen = _stat(self._index)
            return paths

    # -- internals -------------------------------------------------------------

    def close(self) -> None:
        """Stop tracking changes (the next take scans everything)."""
        if self._watch is not None:
            self._watch.close()
        self._index_seen = None
        self._git_setup.close()

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
        dirs, files = self._ignored()
        # An ignore file that ignores itself still rules what git holds: it is
        # held too, so that a checkpoint carries every rule in force when it was
        # taken (a rollback judges by them). Any change to one, or a directory
        # arriving with one, is a full scan (lorch/store/watch.py).
        rules = [p for p in files if _is_rules(p)]
        if rules:
            self._given(("add", "-f", *_FROM_STDIN), rules, literal=True)
        if tracking and self._watch is not None:
            self._watch.ignore(dirs, files)
        elif self._watch is not None:
            self._watch = None  # no inotify, or its limits reached: full scans from now on

    def _ignored(self) -> tuple[list[str], list[str]]:
        """(directories git ignores by a rule, ignored files in the directories it reads)."""
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
        proc = self._run(("check-ignore", "-z", "--stdin"), _nul(dirs))
        if proc.returncode not in (0, 1):  # then watch them all
            return [], files
        return [p for p in os.fsdecode(proc.stdout).split("\0") if p], files

    def _add_some(self, dirty: Dirty) -> bool:
        """``git add -A`` of the changed paths only; False if git refused (then scan all)."""
        for args, paths in (
            (("add", "-A", *_FROM_STDIN), dirty.scan),
            (("rm", "--cached", "-r", "-q", "--ignore-unmatch", *_FROM_STDIN), dirty.gone),
        ):
            if paths:
                proc = self._run(args, _nul(sorted(paths)), literal=True)
                # Exit 1 with this message: a path named is one git ignores; it
                # added all the rest, as a full scan would have (git's add.c).
                if proc.returncode != 0 and not (
                    proc.returncode == 1 and proc.stderr.startswith(_IGNORED_NAMED)
                ):
                    return False
        return True

    # -- rollback ----------------------------------------------------------------

    def _object_type(self, oid: str) -> str | None:
        if not _OID.fullmatch(oid):
            return None
        proc = self._run(("cat-file", "-t", oid))
        return os.fsdecode(proc.stdout).strip() if proc.returncode == 0 else None

    def _without_lorch_paths(self, tree: str, held: list[str]) -> tuple[str, list[str]]:
        """``tree`` without lorch's own paths (a store written before they were
        excluded may hold lorch.json): a rollback never writes them."""
        foreign = [p for p in held if not _holdable(p)]
        if not foreign:
            return tree, held
        self._given(("update-index", "--force-remove", "-z", "--stdin"), foreign)
        return self._git("write-tree").strip(), [p for p in held if _holdable(p)]

    def _made_by_turn(
        self, held: list[str], changed: list[str], rules: list[str]
    ) -> dict[str, bytes | None]:
        """Paths not in the checkpoint that the rollback deletes, with the index
        mode that makes read-tree delete them (None: git replaces them itself).

        A path qualifies if no rule of the checkpoint ignores it (nor any of
        its directories), judged by git in a scratch work tree holding only the
        checkpoint's ignore files; or if it sits where the checkpoint holds a
        file or a directory of the other kind (then it came after it).
        """
        files = set(held)
        dirs = {p.rsplit("/", 1)[0] for p in held if "/" in p}
        for d in list(dirs):
            while "/" in d:
                d = d.rsplit("/", 1)[0]
                dirs.add(d)
        made: dict[str, bytes | None] = {}
        for p in changed:
            path = self.workspace / p
            if p in files and path.is_dir() and not path.is_symlink():
                made.update(dict.fromkeys(self._walk([p + "/"], None)))
        exclude = self._git_setup.private / "info" / "exclude"
        others = self._listed(
            "ls-files", "-z", "-o", "--directory", "--no-empty-directory", "-X", str(exclude)
        )
        judged = []
        for p in others:
            if p.rstrip("/") in dirs and not p.endswith("/"):
                made[p] = None  # a file where the checkpoint holds a directory
            else:
                judged.append(p)
        if not judged:
            return made
        scratch = self._git_setup.rules_dir()
        if rules:
            self._given(("checkout-index", f"--prefix={scratch}/", "-f", "-z", "--stdin"), rules)
        ignored = self._ignored_by(scratch, judged)
        for p in judged:
            if not p.endswith("/") and p not in ignored:
                made[p] = self._mode(p)
        walked = [p for p in judged if p.endswith("/") and p not in ignored]
        for p in self._walk(walked, scratch):
            made[p] = self._mode(p)
        return made

    def _spared(self, made: dict[str, bytes | None], spare: str) -> dict[str, bytes | None]:
        """``made`` without the paths that checkpoint ``spare``'s ignore rules ignore."""
        if self._object_type(spare) != "tree":
            raise StorageError(f"{self.store}: checkpoint {spare} is not in the checkpoint store")
        scratch = self._git_setup.rules_dir()
        listed = self._git("ls-tree", "-r", "-z", "--full-tree", spare)
        for entry in listed.split("\0"):
            meta, _, rel = entry.partition("\t")
            if not rel or not _is_rules(rel) or not meta.startswith("100"):
                continue
            blob = self._run(("cat-file", "blob", meta.split()[2]))
            if blob.returncode != 0:
                raise StorageError(
                    f"checkpoints in {self.store}: cannot read {rel} of checkpoint {spare}"
                )
            target = scratch / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(blob.stdout)
        ignored = self._ignored_by(scratch, list(made))
        return {p: mode for p, mode in made.items() if p not in ignored}

    def unheld(self) -> list[str]:
        """What the workspace holds that no checkpoint does (ignored paths, hidden
        directories such as ``.git/``), lorch's own paths left out; a directory
        all of whose content is unheld is named once, with a trailing "/"."""
        with self._locked():
            out = self._listed(
                "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory"
            )
        if os.path.lexists(self.workspace / ".git"):
            out.append(
                ".git/" if (self.workspace / ".git").is_dir() else ".git"
            )  # git never lists it
        dirs = {p for p in out if p.endswith("/")}
        return sorted(
            p
            for p in set(out)
            if p not in EXCLUDED_FILES
            and p.rstrip("/").split("/", 1)[0] not in EXCLUDED
            and not any(p.startswith(d) and p != d for d in dirs)
        )

    def _walk(self, top: list[str], scratch: Path | None) -> list[str]:
        """The files below directories ``top`` (each ending in "/"), level by level;
        with ``scratch``, leaving out what the rules there ignore (and all below
        an ignored directory); without, leaving out hidden directories."""
        found: list[str] = []
        level = top
        while level:
            entries: list[str] = []
            for d in level:
                try:
                    it = os.scandir(self.workspace / d)
                except OSError:
                    continue
                with it:
                    for e in it:
                        if not e.is_dir(follow_symlinks=False):
                            entries.append(d + e.name)
                        elif scratch is not None or not e.name.startswith("."):
                            entries.append(d + e.name + "/")
            ignored = self._ignored_by(scratch, entries) if scratch and entries else set()
            kept = [p for p in entries if p not in ignored]
            found += [p for p in kept if not p.endswith("/")]
            level = [p for p in kept if p.endswith("/")]
        return found

    def _ignored_by(self, scratch: Path, paths: list[str]) -> set[str]:
        """Which of ``paths`` (directories ending in "/") the rules in ``scratch`` ignore."""
        # check-ignore knows no literal pathspecs: "./" keeps a leading ":" a name.
        proc = self._run(
            ("check-ignore", "-z", "--stdin", "--no-index"),
            _nul("./" + p for p in paths),
            work_tree=scratch,
        )
        if proc.returncode not in (0, 1):
            raise StorageError(
                f"checkpoints in {self.store}: git check-ignore failed: "
                f"{_last_line(proc.stderr, proc.returncode)}"
            )
        return {p.removeprefix("./") for p in os.fsdecode(proc.stdout).split("\0") if p}

    def _mode(self, rel: str) -> bytes:
        return b"120000" if os.path.islink(self.workspace / rel) else b"100644"

    # -- running git -------------------------------------------------------------

    def _still_ours(self) -> None:
        if self._index_seen is not None:
            self._index_seen = _stat(self._index)

    def _listed(self, *args: str) -> list[str]:
        return [p for p in self._git(*args).split("\0") if p]

    def _given(self, args: tuple[str, ...], paths: list[str], *, literal: bool = False) -> None:
        self._run_ok(args, _nul(paths), literal=literal)

    def _run_ok(self, args: tuple[str, ...], given: bytes, *, literal: bool = False) -> str:
        proc = self._run(args, given, literal=literal)
        if proc.returncode != 0:
            raise StorageError(
                f"checkpoints in {self.store}: git {args[0]} failed: "
                f"{_last_line(proc.stderr, proc.returncode)}"
            )
        return os.fsdecode(proc.stdout)

    def _git(self, *args: str, rebuild: bool = False) -> str:
        proc = self._run(args)
        if proc.returncode != 0 and b"index file" in proc.stderr and self._index.exists():
            # A torn index (power loss): it is a cache, rebuilt by a full add,
            # which always comes first under the lock.
            self._index.unlink()
            if rebuild:
                proc = self._run(args)
        if proc.returncode != 0:
            raise StorageError(
                f"checkpoints in {self.store}: git {args[0]} failed: "
                f"{_last_line(proc.stderr, proc.returncode)}"
            )
        return os.fsdecode(proc.stdout)

    def _run(
        self,
        args: tuple[str, ...],
        given: bytes | None = None,
        *,
        work_tree: Path | None = None,
        literal: bool = False,
    ) -> subprocess.CompletedProcess[bytes]:
        git = self._git_setup
        git.guard()  # under the store's flock: nothing planted in the store is read
        env = git.env(work_tree, **({"GIT_LITERAL_PATHSPECS": "1"} if literal else {}))
        try:
            return subprocess.run(
                [*git.argv, *args],
                cwd=self.workspace if work_tree is None else work_tree,
                env=env,
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
        fd = os.open(self.store / "lorch.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
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
                self._git_setup.init()
                self._ready = True
            yield
        finally:
            self._held = None
            os.close(fd)  # releases the flock

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


def _nul(paths: Iterable[str]) -> bytes:
    return b"".join(os.fsencode(p) + b"\0" for p in paths)


def _last_line(stderr: bytes, code: int) -> str:
    err = os.fsdecode(stderr).strip().splitlines()
    return err[-1] if err else f"exit status {code}"


def _is_rules(rel: str) -> bool:
    """An ignore file: ``.gitignore`` at any depth."""
    return rel.rsplit("/", 1)[-1] == ".gitignore"


def _holdable(rel: str) -> bool:
    """Whether a checkpoint may hold ``rel`` (the rules of :data:`EXCLUDE`)."""
    parts = rel.split("/")
    if rel in EXCLUDED_FILES or (len(parts) > 1 and parts[0] in EXCLUDED):
        return False
    return not any(part.startswith(".") for part in parts[:-1])


def _fsync(path: Path, flags: int) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | flags)
    except OSError:
        return  # removed, or its directory was: nothing there to sync
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
