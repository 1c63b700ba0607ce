"""Streaming sha256 checksums in the ``sha256:<64 hex>`` form."""

from __future__ import annotations

import errno
import hashlib
import os
import stat

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Checksum and size of a regular file, read in fixed chunks (constant memory).

    Anything else (a directory, a FIFO, a device) raises ``OSError`` without
    being read: opening is non-blocking, so a FIFO cannot hang the caller.
    """
    sha, size, _ = sha256_file_stat(path)
    return sha, size


def sha256_file_stat(path: str | os.PathLike[str]) -> tuple[str, int, os.stat_result]:
    """:func:`sha256_file`, with the ``fstat`` of the very file that was read."""
    h = hashlib.sha256()
    size = 0
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        # A buffer no bigger than the file (+1 to see EOF in one read): most
        # artifacts are small, and zeroing a whole chunk for each costs more
        # than hashing them.
        buf = bytearray(min(CHUNK, st.st_size + 1))
        view = memoryview(buf)
        while n := os.readv(fd, [buf]):
            h.update(view[:n])
            size += n
            if n < len(buf) and size == st.st_size:
                break  # all fstat announced, and a short read: the end, no read to see EOF
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest(), size, st


def is_checksum(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 71
        and value.startswith("sha256:")
        and all(c in "0123456789abcdef" for c in value[7:])
    )
