"""Workspace snapshots: a manifest of files and a content-derived id.

The id is ``snap-`` + the first 12 hex digits of the sha256 of the canonical
JSON list of ``[path, size, sha256]`` in path order. Mtimes and absolute paths
are recorded in the manifest but never enter the id, so identical trees give
identical ids on any machine and in any directory.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lorch.store.atomic import atomic_write_json
from lorch.store.layout import LORCH_DIRS
from lorch.wire.canonical import canonical_bytes
from lorch.wire.protocol import now_rfc3339

# lorch's own output folders: what lorch writes is not part of the work.
OUTPUT_DIRS = frozenset(LORCH_DIRS)
EXCLUDED_NAMES = frozenset({"node_modules", "__pycache__"})


def _excluded_dir(rel_parts: tuple[str, ...], name: str) -> bool:
    if name.startswith(".") or name in EXCLUDED_NAMES:
        return True
    return not rel_parts and name in OUTPUT_DIRS


def iter_files(root: Path) -> Iterator[str]:
    """Relative POSIX paths of the files in the snapshot, sorted, streaming per directory."""

    def walk(d: Path, parts: tuple[str, ...]) -> Iterator[str]:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            return
        for e in entries:
            if e.is_dir(follow_symlinks=False):
                if not _excluded_dir(parts, e.name):
                    yield from walk(Path(e.path), (*parts, e.name))
            elif e.is_file(follow_symlinks=False) and not e.name.startswith("."):
                yield "/".join((*parts, e.name))

    # Sorting each directory's entries by name and descending in place gives a
    # different order than sorting full paths ("a/b" vs "a.txt"); sort at the end.
    return iter(sorted(walk(root, ())))


def _hash(path: Path) -> tuple[str, int, float]:
    """sha256, size and mtime from one open file (constant memory)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    return "sha256:" + digest, st.st_size, st.st_mtime


def manifest(root: Path) -> dict[str, Any]:
    files = []
    for rel in iter_files(root):
        sha, size, mtime = _hash(root / rel)
        files.append({"path": rel, "sha256": sha, "size": size, "mtime": mtime})
    return {"snapshot_id": snapshot_id(files), "created_at": now_rfc3339(), "files": files}


def snapshot_id(files: list[dict[str, Any]]) -> str:
    canonical = [
        [f["path"], f["size"], f["sha256"]] for f in sorted(files, key=lambda f: f["path"])
    ]
    return "snap-" + hashlib.sha256(canonical_bytes(canonical)).hexdigest()[:12]


def take(root: Path) -> dict[str, Any]:
    """Take a snapshot and write ``snapshots/<id>.manifest.json``; return the manifest."""
    m = manifest(root)
    atomic_write_json(root / "snapshots" / f"{m['snapshot_id']}.manifest.json", m)
    return m
