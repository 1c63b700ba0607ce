"""Which parts of a workspace changed since the last look, so that a checkpoint
rescans only those (DESIGN.md §11, "Checkpoints"; docs/decisions.md D40).

A :class:`Watch` puts an inotify watch on every directory of the workspace that
a checkpoint can hold (not lorch's own directories, not hidden ones, not the
ones git ignores) and turns the kernel's events into *pathspecs*: the
directories that hold a changed entry, or the changed entry itself at the top
of the tree. ``git add -A`` over those pathspecs records exactly what a full
``git add -A`` would, since nothing outside them changed.

When it cannot tell what changed, :meth:`Watch.drain` returns None and the
caller scans everything: before the first scan, after the kernel's event queue
overflowed, after a directory was moved (the watches below it name the old
path), after a ``.gitignore`` changed or arrived inside a new directory (what
is ignored changed everywhere below it), after a watch could not be added, and
without inotify at all. Watches are added before a directory is listed, and
the events are read before git scans, so a change is either in the scan or in
the next drain: none falls between.

What inotify does not see is out of scope by design: writes through a shared
``mmap`` and changes made through a hard link whose other name is outside the
workspace. ``LORCH_CHECKPOINT_WATCH=0`` turns change tracking off (every
checkpoint scans everything, as before).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    from inotify_simple import INotify, flags

    _MASK = (
        flags.CREATE
        | flags.DELETE
        | flags.MODIFY
        | flags.ATTRIB
        | flags.CLOSE_WRITE
        | flags.MOVED_FROM
        | flags.MOVED_TO
        | flags.DELETE_SELF
        | flags.MOVE_SELF
        | flags.ONLYDIR
        | flags.DONT_FOLLOW
    )
except (ImportError, OSError, AttributeError):  # not Linux: every checkpoint scans everything
    INotify = None
    _MASK = 0


def enabled() -> bool:
    return INotify is not None and os.environ.get("LORCH_CHECKPOINT_WATCH", "1") != "0"


@dataclass
class Dirty:
    """What to rescan: ``scan`` exists (directories, or top-level entries);
    ``gone`` are top-level entries that no longer exist."""

    scan: set[str] = field(default_factory=set)
    gone: set[str] = field(default_factory=set)


class _Unknown(Exception):
    """An event after which the watches cannot say what changed."""


class Watch:
    """Change tracking over ``root``; ``skip(name, rel_dir)`` names directories never held."""

    def __init__(self, root: Path, skip: Callable[[str, str], bool]) -> None:
        self.root = root
        self._skip = skip
        self._fd: Any = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._dirs: dict[int, str] = {}  # watch descriptor → relative dir ("" is the root)
        self._wds: dict[str, int] = {}
        # What git ignored at the last full scan: directories (nothing below
        # them is held) and top-level files. Entries of another type at those
        # names are not known to be ignored and are rescanned.
        self._ignored_dirs: set[str] = set()
        self._ignored_files: set[str] = set()
        # Watches removed on purpose: their last queued events are not news.
        self._dropped: set[int] = set()
        self._root: tuple[int, int] | None = None

    def arm(self) -> bool:
        """Watch the whole tree afresh; call it right before a full scan.

        Returns whether change tracking is on (False: no inotify, or the
        kernel's limits were reached; every scan is then a full one).
        """
        self.close()
        if not enabled():
            return False
        try:
            # The descriptor is closed by close(), or when this object goes.
            self._fd = INotify(nonblocking=True, closefd=False)
            self._finalizer = weakref.finalize(self, os.close, self._fd.fileno())
            self._root = self._root_id()
            self._watch_tree("")
        except (OSError, _Unknown):
            self.close()
            return False
        return True

    def ignore(self, dirs: Iterable[str], files: Iterable[str]) -> None:
        """What git ignores by a rule: directories (stop watching them) and
        top-level files. Rescans leave such paths out without asking git."""
        self._ignored_dirs = set(dirs)
        self._ignored_files = {p for p in files if "/" not in p}
        for rel, wd in list(self._wds.items()):
            if self._ignored(rel, True):
                self._unwatch(rel, wd)

    def drain(self) -> Dirty | None:
        """The changes since the last drain or :meth:`arm`; None: scan everything."""
        if self._fd is None or self._root_id() != self._root:
            self.close()
            return None  # not watching, or the workspace was replaced by another directory
        dirty = Dirty()
        try:
            while True:
                events = self._fd.read(timeout=0)
                if not events:
                    return dirty
                for ev in events:
                    self._event(ev.wd, ev.mask, ev.name, dirty)
        except (OSError, _Unknown):
            self.close()
            return None

    def close(self) -> None:
        if self._finalizer is not None:
            self._finalizer()  # closes the descriptor, once
            self._finalizer = None
        self._fd = None
        self._dirs.clear()
        self._wds.clear()
        self._dropped.clear()

    # -- internals -------------------------------------------------------------

    def _event(self, wd: int, mask: int, name: str, dirty: Dirty) -> None:
        if mask & (flags.Q_OVERFLOW | flags.MOVE_SELF | flags.UNMOUNT):
            raise _Unknown
        if mask & flags.IGNORED:  # the watch is gone (its directory was removed)
            self._dropped.discard(wd)
            rel = self._dirs.pop(wd, None)
            if rel is not None and self._wds.get(rel) == wd:
                del self._wds[rel]
            return
        if wd in self._dropped:
            return
        parent = self._dirs.get(wd)
        if parent is None:
            raise _Unknown
        if mask & flags.DELETE_SELF:
            if not parent:
                raise _Unknown  # the workspace itself is gone: nothing is watched
            return  # a directory being removed: its parent's watch reports the removal
        if name == ".gitignore":
            raise _Unknown  # what is ignored may have changed anywhere below
        rel = f"{parent}/{name}" if parent else name
        is_dir = bool(mask & flags.ISDIR)
        if is_dir and self._skip(name, parent):
            return  # never held, and nothing below it is watched
        if is_dir and mask & flags.MOVED_FROM and rel in self._wds:
            raise _Unknown  # the watches below it now name the old path
        if self._ignored(rel, is_dir):
            return
        if is_dir and mask & (flags.CREATE | flags.MOVED_TO):
            self._watch_tree(rel, arrived=True)
        self._mark(parent, rel, dirty)

    def _mark(self, parent: str, rel: str, dirty: Dirty) -> None:
        """Rescan the directory holding ``rel`` (or ``rel`` itself at the top)."""
        path = parent
        while path:
            if os.path.isdir(os.path.join(self.root, path)) and not os.path.islink(
                os.path.join(self.root, path)
            ):
                dirty.scan.add(path)
                return
            rel, path = path, path.rpartition("/")[0]
        top = rel.partition("/")[0]
        if os.path.lexists(os.path.join(self.root, top)):
            dirty.scan.add(top)
        else:
            dirty.gone.add(top)

    def _watch_tree(self, rel: str, *, arrived: bool = False) -> None:
        """Watch ``rel`` and every directory below it (each watched before it is listed).

        ``arrived``: a directory made or moved in since the last scan; one that
        holds a ``.gitignore`` means a full scan (its rules, and the ignore file
        itself when it ignores itself, are for the full scan to find).
        """
        stack = [rel]
        while stack:
            d = stack.pop()
            path = os.path.join(self.root, d) if d else str(self.root)
            try:
                wd = self._fd.add_watch(path, _MASK)
            except OSError as e:
                if d and e.errno in (2, 20):  # gone, or no longer a directory: its parent saw it
                    continue
                raise _Unknown from e
            if self._dirs.get(wd, d) != d:
                raise _Unknown  # one directory under two names (a bind mount)
            old = self._wds.get(d)
            if old is not None and old != wd:
                self._dirs.pop(old, None)
            self._dirs[wd] = d
            self._wds[d] = wd
            try:
                with os.scandir(path) as it:
                    for entry in it:
                        if arrived and entry.name == ".gitignore":
                            raise _Unknown
                        if entry.is_dir(follow_symlinks=False) and not self._skip(entry.name, d):
                            stack.append(f"{d}/{entry.name}" if d else entry.name)
            except (FileNotFoundError, NotADirectoryError):
                continue

    def _root_id(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.root)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    def _unwatch(self, rel: str, wd: int) -> None:
        self._wds.pop(rel, None)
        self._dirs.pop(wd, None)
        try:
            self._fd.rm_watch(wd)
            self._dropped.add(wd)
        except OSError:
            pass  # already gone with its directory

    def _ignored(self, rel: str, is_dir: bool) -> bool:
        """Whether git ignored ``rel`` (of that type) at the last full scan."""
        if (is_dir and rel in self._ignored_dirs) or (not is_dir and rel in self._ignored_files):
            return True
        probe = rel.rpartition("/")[0]
        while probe:
            if probe in self._ignored_dirs:
                return True
            probe = probe.rpartition("/")[0]
        return False
