"""File access below a root directory that never follows a symlink and cannot race.

Every path is opened component by component from a directory file descriptor:
each directory with ``O_DIRECTORY | O_NOFOLLOW``, the last component with
``O_NOFOLLOW``. A directory swapped for a symlink between a check and a write
therefore cannot lead anywhere: there is no check apart from the open itself,
and every later step (create, rename, sync) goes through the descriptor that
open returned. Only regular files are read or replaced; a FIFO, device or socket
is refused from its ``stat`` before it is opened, and opened non-blocking in
case it was swapped in meanwhile.

Errors: :class:`~lorch.wire.errors.PathEscape` for a path that is not a plain
relative path or leads through a symlink; ``OSError`` for the rest (including
:class:`NotRegular` and :class:`TooLarge`, so ``except OSError`` covers them).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Iterator

from lorch.wire.errors import PathEscape

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
CHUNK = 1 << 16
NEW_FILE_MODE = 0o644
NEW_DIR_MODE = 0o755

Root = str | os.PathLike[str] | int


class SymlinkRefused(PathEscape):
    """A symlink where lorch opens a path component by component: never followed."""

    def __init__(self, rel: str, name: str) -> None:
        super().__init__(
            f"path {rel!r} leads outside the workspace (through a symlink: {name!r}); "
            "lorch never follows a symlink"
        )
        self.name = name


class NotRegular(OSError):
    """A FIFO, device, socket or directory where a regular file was expected."""

    def __init__(self, name: str, mode: int) -> None:
        super().__init__(errno.EINVAL, f"not a regular file ({_kind(mode)})", name)


class TooLarge(OSError):
    """More bytes than the caller may take."""

    def __init__(self, name: str, limit: int, size: int | None = None) -> None:
        super().__init__(errno.EFBIG, f"larger than {limit} bytes", name)
        self.size = size  # when known


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISLNK, "a symlink"),
    ):
        if test(mode):
            return name
    return "not a plain file"


def split(rel: str) -> list[str]:
    """The components of a relative path; PathEscape for anything that could leave the root."""
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        raise PathEscape(f"path {rel!r} is empty or contains NUL")
    if rel.startswith(("/", "\\")) or os.path.isabs(rel):
        raise PathEscape(f"path {rel!r} is absolute; expected a path relative to the workspace")
    parts = [p for p in rel.split("/") if p and p != "."]
    if ".." in parts:
        raise PathEscape(f"path {rel!r} contains '..'; expected a path inside the workspace")
    if not parts:
        raise PathEscape(f"path {rel!r} names the workspace itself, not a file in it")
    return parts


def _symlink(rel: str, name: str) -> SymlinkRefused:
    return SymlinkRefused(rel, name)


def _is_link(dfd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dfd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_root(root: Root) -> int:
    if isinstance(root, int):
        return os.dup(root)
    return os.open(os.fspath(root), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _step(dfd: int, name: str, rel: str, create: bool, mode: int, exact: bool) -> int:
    """Open directory ``name`` in ``dfd`` without following a symlink (made first if ``create``;
    with exactly ``mode``, whatever the umask, if ``exact``)."""
    try:
        return os.open(name, DIR_FLAGS, dir_fd=dfd)
    except FileNotFoundError:
        if not create:
            raise
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and _is_link(dfd, name):
            raise _symlink(rel, name) from None
        raise
    made = False
    with contextlib.suppress(FileExistsError):  # made meanwhile: opened below, no-follow
        os.mkdir(name, mode, dir_fd=dfd)
        made = True
    try:
        fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR, errno.EMLINK) and _is_link(dfd, name):
            raise _symlink(rel, name) from None
        raise
    if made:
        try:
            if exact:
                os.fchmod(fd, mode)
            os.fsync(dfd)  # the new entry is durable before anything is put in it
        except OSError:
            os.close(fd)
            raise
    return fd


def open_dir_fd(
    root: Root,
    parts: list[str],
    rel: str = "",
    *,
    create: bool = False,
    mode: int = NEW_DIR_MODE,
    exact: bool = False,
) -> int:
    """A descriptor of ``root/parts...`` (the caller closes it); each component is
    opened no-follow, and made first if ``create`` (with exactly ``mode`` if ``exact``)."""
    fd = _open_root(root)
    try:
        for name in parts:
            nxt = _step(fd, name, rel or "/".join(parts), create, mode, exact)
            os.close(fd)
            fd = nxt
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def open_dir(
    root: Root,
    parts: list[str],
    rel: str = "",
    *,
    create: bool = False,
    mode: int = NEW_DIR_MODE,
    exact: bool = False,
) -> Iterator[int]:
    """:func:`open_dir_fd`, closed on leaving."""
    fd = open_dir_fd(root, parts, rel, create=create, mode=mode, exact=exact)
    try:
        yield fd
    finally:
        os.close(fd)


def open_regular(dfd: int, name: str, rel: str = "") -> int:
    """Open regular file ``name`` in directory ``dfd`` for reading: no symlink, no FIFO, no device.

    The ``stat`` comes first, so a FIFO or a device is never opened; the open is
    non-blocking and checked again, so one swapped in meanwhile cannot block.
    """
    shown = rel or name
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if stat.S_ISLNK(st.st_mode):
        raise _symlink(shown, name)
    if not stat.S_ISREG(st.st_mode):
        raise NotRegular(shown, st.st_mode)
    try:
        fd = os.open(name, READ_FLAGS, dir_fd=dfd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise _symlink(shown, name) from None
        raise
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotRegular(shown, st.st_mode)
    return fd


@contextlib.contextmanager
def opened(root: Root, rel: str) -> Iterator[int]:
    """A read descriptor of the regular file ``root/rel`` (see :func:`open_regular`)."""
    parts = split(rel)
    with open_dir(root, parts[:-1], rel) as dfd:
        fd = open_regular(dfd, parts[-1], rel)
    try:
        yield fd
    finally:
        os.close(fd)


def read_fd(fd: int, max_bytes: int, name: str = "") -> bytes:
    """Everything in ``fd``, or TooLarge once more than ``max_bytes`` were seen."""
    out = bytearray()
    while chunk := os.read(fd, min(CHUNK, max_bytes + 1 - len(out))):
        out += chunk
        if len(out) > max_bytes:
            raise TooLarge(name, max_bytes)
    return bytes(out)


def read_regular(root: Root, rel: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``root/rel``, at most ``max_bytes`` (else TooLarge).

    No component is followed if it is a symlink; a FIFO, device or socket is
    refused without being opened blocking.
    """
    with opened(root, rel) as fd:
        return read_fd(fd, max_bytes, rel)


def read_lines(
    fd: int, line: int | None, limit: int | None, max_bytes: int, name: str = ""
) -> bytes:
    """Lines ``line`` (1-based) .. ``line + limit - 1`` of ``fd``, read in chunks.

    Memory is bounded by what is returned: lines before ``line`` are counted
    and dropped, reading stops once ``limit`` lines are collected, and more than
    ``max_bytes`` to return is TooLarge. Lines end at ``\\n`` only.
    """
    first = max(line or 1, 1)
    seen = 1  # the number of the line the next byte belongs to
    out = bytearray()
    taken = 0
    if limit is not None and limit <= 0:
        return b""
    while chunk := os.read(fd, CHUNK):
        start = 0
        if seen < first:
            if seen + chunk.count(b"\n") < first:  # the whole chunk is before the first line
                seen += chunk.count(b"\n")
                continue
            while seen < first:
                start = chunk.index(b"\n", start) + 1
                seen += 1
        pos = len(chunk)
        if limit is not None and taken + chunk.count(b"\n", start) >= limit:
            pos = start
            while taken < limit:
                pos = chunk.index(b"\n", pos) + 1
                taken += 1
        elif limit is not None:
            taken += chunk.count(b"\n", start)
        out += chunk[start:pos]
        if len(out) > max_bytes:
            raise TooLarge(name, max_bytes)
        if limit is not None and taken >= limit:
            break
    return bytes(out)


def write_file(
    root: Root,
    rel: str,
    data: bytes,
    *,
    new_mode: int = NEW_FILE_MODE,
    dir_mode: int = NEW_DIR_MODE,
) -> None:
    """Replace (or create) the regular file ``root/rel`` with ``data``, whole.

    Missing directories are made; every directory is opened no-follow. The temp
    file gets an unpredictable name in the target's directory, opened by its
    descriptor, and is created ``O_CREAT | O_EXCL | O_NOFOLLOW``: nothing planted
    there can redirect it. It is written, given the mode of the file it replaces
    (permission bits only: no set-id bit survives), synced, renamed into place
    relative to the same directory descriptor, and the directory synced.
    A symlink, directory, FIFO or device at ``rel`` is refused, never replaced.
    """
    parts = split(rel)
    name = parts[-1]
    with open_dir(root, parts[:-1], rel, create=True, mode=dir_mode) as dfd:
        mode = new_mode
        try:
            st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISLNK(st.st_mode):
                raise _symlink(rel, name)
            if not stat.S_ISREG(st.st_mode):
                raise NotRegular(rel, st.st_mode)
            mode = st.st_mode & 0o777
        tmp = f".{secrets.token_hex(16)}.lorch-tmp"
        fd = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=dfd,
        )
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                os.fchmod(fd, mode)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=dfd)
            raise
        os.fsync(dfd)
