"""Paths that agents name must stay inside the workspace (DESIGN.md §5.8).

Also the one list of what in a workspace is lorch's own (:data:`LORCH_DIRS`,
:data:`LORCH_FILES`, :data:`GIT_DIR`), which no agent request may touch, and
the verdict directory each role owns (:data:`VERDICT_DIRS`).
"""

from __future__ import annotations

import hashlib
import os
import stat
from functools import lru_cache
from pathlib import Path
from typing import Any

from lorch.store import safefs
from lorch.store.layout import GIT_DIR, LORCH_DIRS, LORCH_FILES, VERDICT_DIRS
from lorch.wire.errors import PathEscape


def lorch_owned(rel: str) -> str | None:
    """Why the workspace-relative ``rel`` is not an agent's to read or write, or None.

    Compared case-insensitively: on a case-insensitive file system ``Events/``
    is ``events/``.
    """
    parts = [p.casefold() for p in rel.split("/") if p and p != "."]
    if not parts:
        return None
    if GIT_DIR in parts:
        return f"{rel} is inside .git/ (git's hooks and config run code)"
    if parts[0] in LORCH_DIRS:
        return f"{rel} is inside lorch's own {parts[0]}/"
    if len(parts) == 1 and parts[0] in LORCH_FILES:
        return f"{rel} is lorch's own configuration"
    return None


def verdict_owner(rel: str) -> str | None:
    """The role whose verdict directory holds ``rel``, or None."""
    parts = [p.casefold() for p in rel.split("/") if p and p != "."]
    for role, folder in VERDICT_DIRS.items():
        if parts and parts[0] == folder:
            return role
    return None


def sha256_regular(
    workspace: Path, rel: str, max_bytes: int | None = None
) -> tuple[str, int, os.stat_result]:
    """(checksum, size, stat) of the regular file ``workspace/rel``, read by descriptor.

    No component is followed if it is a symlink (PathEscape), and a FIFO or a
    device is refused without being opened blocking (:class:`safefs.NotRegular`).
    A file larger than ``max_bytes`` is :class:`safefs.TooLarge`, before it is read.
    """
    h = hashlib.sha256()
    size = 0
    with safefs.opened(_real(str(workspace)), rel) as fd:
        st = os.fstat(fd)
        if max_bytes is not None and st.st_size > max_bytes:
            raise safefs.TooLarge(rel, max_bytes, st.st_size)
        while chunk := os.read(fd, 1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size, st


def safe_relpath(workspace: Path, rel: str) -> Path:
    """Resolve an agent-supplied relative path, refusing any escape.

    Refused: empty, absolute, any ``..`` component, NUL bytes, and a path whose
    real location (after following symlinks) is outside the workspace.
    """
    if not rel or "\x00" in rel:
        raise PathEscape(f"artifact path {rel!r} is empty or contains NUL")
    if rel.startswith(("/", "\\")) or os.path.isabs(rel):
        raise PathEscape(
            f"artifact path {rel!r} is absolute; expected a path relative to the workspace"
        )
    # Plain string work: this runs for every artifact, on the path between an
    # agent's answer and lorch's next command.
    parts = [part for part in rel.split("/") if part and part != "."]
    if ".." in parts:
        raise PathEscape(
            f"artifact path {rel!r} contains '..'; expected a path inside the workspace"
        )
    root = _real(str(workspace))
    # Only a symlink can lead out: look at each component below the root, and
    # resolve the whole path only when one of them is a link.
    cur = root
    for part in parts:
        cur = os.path.join(cur, part)
        try:
            mode = os.lstat(cur).st_mode
        except OSError:
            break  # does not exist (yet): nothing below it can be a link
        if stat.S_ISLNK(mode):
            full = os.path.realpath(os.path.join(root, rel))
            if full != root and not full.startswith(root.rstrip(os.sep) + os.sep):
                raise PathEscape(
                    f"artifact path {rel!r} leads outside the workspace (through a symlink)"
                )
            break
    return Path(root, *parts)


@lru_cache(maxsize=64)
def _real(path: str) -> str:
    # The workspace root is resolved once per process: a run checks every
    # artifact against it, and it does not move under a running lorch.
    return os.path.realpath(path)


def links_problem(workspace: Path, st: os.stat_result) -> str | None:
    """Why an artifact file with this ``stat`` is not the workspace's own, or None.

    A file with one link is where its path says. A hard link has other names
    too, maybe outside the workspace (where lorch's checksum could not vouch
    for what the agent changed): it is accepted only when every one of its
    links is found inside the workspace, by device and inode.
    """
    if st.st_nlink <= 1:
        return None
    root = _real(str(workspace))
    if os.stat(root).st_dev != st.st_dev:
        return "it is on another file system than the workspace"
    found = 0
    for dirpath, dirs, files in os.walk(root):
        for name in files:
            try:
                other = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            if other.st_ino == st.st_ino and other.st_dev == st.st_dev:
                found += 1
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(dirpath, d))]
    if found >= st.st_nlink:
        return None
    return (
        f"it is a hard link with {st.st_nlink - found} of its {st.st_nlink} names "
        "outside the workspace; an artifact must be a file of its own"
    )


def missing_outputs(workspace: Path, command: dict[str, Any]) -> list[tuple[str, str]]:
    """The command's required ``expected_outputs`` that are not a file in the workspace."""
    problems = []
    for out in command.get("expected_outputs") or []:
        if not isinstance(out, dict) or out.get("required") is not True:
            continue
        path = str(out.get("path"))
        try:
            parts = safefs.split(path)
            with safefs.open_dir(_real(str(workspace)), parts[:-1], path) as dfd:
                mode = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False).st_mode
        except PathEscape as e:
            problems.append((path, f"required output: {e}"))
            continue
        except OSError:
            mode = 0
        if not stat.S_ISREG(mode):
            problems.append((path, "required output was not written"))
    return problems


def artifact_problems(
    workspace: Path, event: dict[str, Any], max_bytes: int | None = None
) -> list[tuple[str, str]]:
    """What is wrong with the artifacts an event claims: (path, reason) for each.

    ``max_bytes`` (``policy.artifact_max_bytes``): a larger file is refused.
    """
    problems = []
    for art in event.get("artifacts") or []:
        path = str(art.get("path"))
        try:
            sha, size, st = sha256_regular(workspace, path, max_bytes)
        except safefs.TooLarge as e:
            problems.append(
                (path, f"{e.size} bytes is over policy.artifact_max_bytes ({max_bytes})")
            )
            continue
        except PathEscape as e:
            problems.append((path, str(e)))
            continue
        except safefs.NotRegular as e:
            problems.append((path, f"cannot read it: {e.strerror}"))
            continue
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            problems.append((path, "no such file in the workspace"))
            continue
        except OSError as e:
            problems.append((path, f"cannot read it: {e.strerror}"))
            continue
        if max_bytes is not None and size > max_bytes:  # grew while it was read
            problems.append((path, f"{size} bytes is over policy.artifact_max_bytes ({max_bytes})"))
            continue
        if (links := links_problem(workspace, st)) is not None:
            problems.append((path, links))
            continue
        if sha != art.get("sha256") or size != art.get("size"):
            claim = f"{art.get('sha256')} ({art.get('size')} bytes)"
            problems.append((path, f"agent claimed {claim}, file has {sha} ({size} bytes)"))
    return problems
