"""Atomic, durable file writes (DESIGN.md §5.7).

Temp file in the same directory → write → fsync → rename → fsync the directory.
A crash at any instant leaves either the old file or the new one, never a mix;
the temp file is removed when the write fails. Files are 0600, directories 0700.

lorch's own files never follow a symlink an agent planted: from the folder that
holds lorch's own folders (the workspace: the parent of the first component of
the path named in :data:`lorch.store.layout.LORCH_DIRS`) down, every directory is
opened by descriptor without following a symlink (:mod:`lorch.store.safefs`); the
temp file is created ``O_EXCL | O_NOFOLLOW`` and renamed relative to that
descriptor. A symlink there is a :class:`StorageError` naming it. Above that
folder (the user's own path to the workspace) symlinks are the user's.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from lorch.store import failpoint, safefs
from lorch.store.layout import LORCH_DIRS
from lorch.wire.errors import StorageError

FILE_MODE = 0o600
DIR_MODE = 0o700
TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _split(directory: Path) -> tuple[Path, list[str]]:
    """(the folder holding lorch's own folders, the components from there down to ``directory``).

    No lorch folder in the path (a report the user asked for elsewhere): the
    whole path is the user's, nothing below it.
    """
    parts = Path(os.path.abspath(directory)).parts
    for i, part in enumerate(parts):
        if i > 0 and part in LORCH_DIRS:
            return Path(*parts[:i]), list(parts[i:])
    return Path(*parts), []


def symlink_error(path: str | os.PathLike[str], name: str) -> StorageError:
    return StorageError(
        f"{path}: {name!r} in lorch's own files is a symlink (an agent's?); "
        "lorch never follows one: remove it and run again"
    )


def open_dir(directory: str | os.PathLike[str], what: str = "write") -> int:
    """A descriptor of ``directory`` (made 0700 where missing), no symlink followed
    below the workspace; the caller closes it. StorageError naming a symlink found."""
    base, below = _split(Path(directory))
    _ensure_plain(base)
    try:
        return safefs.open_dir_fd(
            base, below, str(directory), create=True, mode=DIR_MODE, exact=True
        )
    except safefs.SymlinkRefused as e:
        raise symlink_error(directory, e.name) from None
    except OSError as e:
        raise StorageError(f"cannot {what} {directory}: {e.strerror}") from e


def ensure_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (and parents) with mode 0700; fsync the parent of each new level.

    Below the workspace no symlink is followed (StorageError naming it).
    """
    os.close(open_dir(path, "create directory"))
    return Path(path)


def _ensure_plain(path: str | os.PathLike[str]) -> Path:
    """ensure_dir for the user's part of a path (symlinks there are the user's)."""
    p = Path(path)
    missing: list[Path] = []
    cur = p
    while not cur.exists():
        missing.append(cur)
        cur = cur.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=DIR_MODE)
            os.chmod(d, DIR_MODE)  # 0700 whatever the umask
        except FileExistsError:
            continue
        except OSError as e:
            raise StorageError(f"cannot create directory {d}: {e.strerror}") from e
        fsync_dir(d.parent)
    return p


def fsync_dir(path: str | os.PathLike[str]) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise StorageError(f"cannot sync directory {path}: {e.strerror}") from e


def _open_temp(target: Path, dfd: int) -> tuple[str, int]:
    """A new temp file for ``target`` in its directory ``dfd``: (its name, its descriptor)."""
    tmp = temp_name(target.name)
    try:
        failpoint.io_fault(target)
        fd = os.open(tmp, TEMP_FLAGS, FILE_MODE, dir_fd=dfd)
    except OSError as e:
        raise StorageError(f"cannot write {target}: {e.strerror}") from e
    try:
        os.fchmod(fd, FILE_MODE)  # 0600 whatever the umask
    except OSError as e:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        raise StorageError(f"cannot write {target}: {e.strerror}") from e
    return tmp, fd


# lorch's temp files: ".<name>.tmp-<pid>-<8 hex>" (resume removes stale ones).
TEMP_PATTERN = re.compile(r"^\.(?P<name>.+)\.tmp-(?P<pid>\d+)(-[0-9a-f]{8})?$")


def temp_name(name: str) -> str:
    return f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def remove_stale_temps(dirs: list[Path]) -> list[Path]:
    """Delete lorch's own temp files left in ``dirs`` (and their subfolders) by a crash.

    Only names of :data:`TEMP_PATTERN` are touched, and only by a caller that
    holds the workspace lock: no other lorch can be writing them.
    """
    removed = []
    for top in dirs:
        if not top.is_dir() or top.is_symlink():
            continue
        for root, subdirs, files in os.walk(top):
            subdirs[:] = [d for d in subdirs if not os.path.islink(os.path.join(root, d))]
            for name in files:
                if TEMP_PATTERN.match(name):
                    path = Path(root, name)
                    with contextlib.suppress(OSError):  # best effort: writes report the disk
                        path.unlink()
                        removed.append(path)
    return removed


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _start_writeback(fd: int) -> None:
    """Ask the kernel to start writing the file's dirty pages now, without waiting.

    Before a batch of fsyncs, this lets the file system write and allocate every
    file's data in one go; each fsync then mostly finds its work done (on ext4 a
    batch of 16 small receipts syncs about twice as fast). Durability still
    comes from the fsync that follows.
    """
    if hasattr(os, "posix_fadvise"):
        with contextlib.suppress(OSError):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)


def _write_temp(target: Path, dfd: int, chunks: Iterable[bytes]) -> str:
    tmp, fd = _open_temp(target, dfd)
    try:
        for data in chunks:
            _write_all(fd, data)
        os.fsync(fd)
    except BaseException as e:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dfd)
        if isinstance(e, OSError):
            raise StorageError(f"cannot write {target}: {e.strerror}") from e
        raise
    os.close(fd)
    return tmp


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably."""
    atomic_write_chunks(path, (data,))


def atomic_write_chunks(path: str | os.PathLike[str], chunks: Iterable[bytes]) -> None:
    """Replace ``path`` with the concatenated ``chunks``, atomically and durably.

    The chunks are written as they come, so a large file never sits in memory.
    A symlink at ``path`` is replaced, never followed.
    """
    target = Path(path)
    dfd = open_dir(target.parent)
    try:
        tmp = _write_temp(target, dfd, chunks)
        try:
            os.replace(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            if isinstance(e, OSError):
                raise StorageError(f"cannot write {target}: {e.strerror}") from e
            raise
        _sync(dfd, target.parent)
    finally:
        os.close(dfd)


def _sync(dfd: int, path: Path) -> None:
    try:
        os.fsync(dfd)
    except OSError as e:
        raise StorageError(f"cannot sync directory {path}: {e.strerror}") from e


def atomic_create_bytes(path: str | os.PathLike[str], data: bytes) -> bool:
    """Create ``path`` atomically only if it does not exist yet.

    Returns False (and writes nothing) when the file is already there: receipts
    use this so that a step number, once taken, is never overwritten.
    """
    return atomic_create_many([(Path(path), data)])[0]


def atomic_create_many(items: list[tuple[Path, bytes]]) -> list[bool]:
    """:func:`atomic_create_bytes` for several files at once, with fewer syncs.

    Every file is written to its temp file and its writeback started, then each
    temp file is synced, then each is linked into place, then each directory is
    synced once. Returns, per item, whether it was created (False: the name was
    taken).
    """
    temps: list[tuple[int, str]] = []  # (directory descriptor, temp name)
    fds: list[int] = []
    dirs: dict[Path, int] = {}
    results: list[bool] = []
    try:
        for target, _ in items:
            if target.parent not in dirs:
                dirs[target.parent] = open_dir(target.parent)
        for target, data in items:
            dfd = dirs[target.parent]
            tmp, fd = _open_temp(target, dfd)
            temps.append((dfd, tmp))
            fds.append(fd)
            _write_all(fd, data)
            _start_writeback(fd)
        for fd in fds:
            os.fsync(fd)
        for (target, _), (dfd, tmp) in zip(items, temps, strict=True):
            try:
                os.link(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)
                results.append(True)
            except FileExistsError:
                results.append(False)
        for parent in sorted(dirs):
            _sync(dirs[parent], parent)
    except OSError as e:
        raise StorageError(f"cannot write {items[len(results)][0]}: {e.strerror}") from e
    finally:
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        for dfd, tmp in temps:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
        for dfd in dirs.values():
            os.close(dfd)
    return results


def open_append(path: str | os.PathLike[str]) -> IO[str]:
    """A log of lorch's (an agent's log) opened to append, 0600, never through a symlink.

    The file is opened ``O_NOFOLLOW`` in its directory's descriptor, non-blocking
    (a FIFO planted there cannot hold lorch up) and must be a regular file; its
    mode is set on the descriptor, never on a path. StorageError otherwise.
    """
    target = Path(path)
    dfd = open_dir(target.parent, "open")
    try:
        failpoint.io_fault(target)
        with contextlib.suppress(FileNotFoundError):
            mode = os.stat(target.name, dir_fd=dfd, follow_symlinks=False).st_mode
            if stat.S_ISLNK(mode):
                raise symlink_error(target, target.name)
            if not stat.S_ISREG(mode):
                raise StorageError(f"cannot open {target}: not a regular file")
        fd = os.open(
            target.name,
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
            FILE_MODE,
            dir_fd=dfd,
        )
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise symlink_error(target, target.name) from None
        raise StorageError(f"cannot open {target}: {e.strerror}") from e
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"cannot open {target}: not a regular file")
        os.set_blocking(fd, True)
        os.fchmod(fd, FILE_MODE)
    except OSError as e:
        os.close(fd)
        raise StorageError(f"cannot open {target}: {e.strerror}") from e
    except StorageError:
        os.close(fd)
        raise
    return os.fdopen(fd, "a", encoding="utf-8")


def json_bytes(value: Any) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


def atomic_write_json(path: str | os.PathLike[str], value: Any) -> None:
    atomic_write_bytes(path, json_bytes(value))
