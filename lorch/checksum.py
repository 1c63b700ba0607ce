"""Streaming sha256 checksums in the ``sha256:<64 hex>`` form."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

CHUNK = 1 << 20


def sha256_bytes(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Checksum and size of a file, reading it in fixed chunks (constant memory)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb", buffering=0) as f:
        # A buffer no bigger than the file (+1 to see EOF in one read): most
        # artifacts are small, and zeroing a whole chunk for each costs more
        # than hashing them.
        buf = bytearray(min(CHUNK, os.fstat(f.fileno()).st_size + 1))
        view = memoryview(buf)
        while n := f.readinto(buf):
            h.update(view[:n])
            size += n
    return "sha256:" + h.hexdigest(), size


def is_checksum(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) == 71
        and value.startswith("sha256:")
        and all(c in "0123456789abcdef" for c in value[7:])
    )


def file_matches(path: Path, sha256: str, size: int) -> bool:
    try:
        got, got_size = sha256_file(path)
    except OSError:
        return False
    return got == sha256 and got_size == size
