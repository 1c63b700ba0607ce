"""What the mock agent says and how: wire constants, ids, times, whole lines, durable files.

Standard library only, imported on the agent's start path: the first heartbeat
must not wait for anything heavier.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

MAX_LINE = 262_144
ACTIONS = ("implement", "implement_changes", "review", "update_spec", "intake", "task_discovery")
TERMINAL = {
    "builder.completed",
    "review.completed",
    "spec.updated",
    "spec.no_changes_needed",
    "spec.changes_requested",
    "orchestration.proposed_tasks",
    "orchestration.needs_clarification",
    "orchestration.plan_conflict",
    "error",
}


TASK_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
ID_RE = re.compile(r".{1,256}", re.S)
SNAP_RE = re.compile(r"snap-[0-9a-f]{12}")

compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode


def echo(value: Any, pattern: re.Pattern[str]) -> str:
    """Echo an id from a command, or "unknown" when it is not a valid one."""
    return value if isinstance(value, str) and pattern.fullmatch(value) else "unknown"


_second: tuple[int, str] = (-1, "")


def now() -> str:
    """UTC, microseconds: 2030-01-01T00:00:00.000000Z (the date part formatted once a second)."""
    global _second
    t = time.time()
    sec = int(t)
    cached = _second
    if cached[0] != sec:
        cached = _second = (sec, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)))
    return f"{cached[1]}.{int((t - sec) * 1_000_000):06d}Z"


def new_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(6).hex()}"


def sha256_hex(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def canonical(value: Any) -> str:
    return _canonical(value)


def atomic_write(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace ``path`` with ``data``: the content and the name are durable on return."""
    from mockagent.journal import fsync_dir, makedirs

    path = os.fspath(path)
    parent = os.path.dirname(path) or "."
    makedirs(parent)
    tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            getattr(os, "fdatasync", os.fsync)(fd)  # the data and the size
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        # Not contextlib.suppress: importing contextlib costs an agent more than this.
        try:  # noqa: SIM105
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(parent)


class AgentOptions:
    """What the command line decided (paths are absolute or relative strings)."""

    def __init__(
        self,
        *,
        role: str,
        agent_id: str,
        workspace: str,
        state_dir: str,
        fixture: dict[str, Any],
        fixture_dir: str,
        heartbeat_interval: float,
        heartbeats: bool,
        seed: int,
        review_changes: int,
        spec_changes: int,
        expect_snapshot: str | None,
        no_files: bool = False,
    ) -> None:
        self.role = role
        self.agent_id = agent_id
        self.workspace = workspace
        self.state_dir = state_dir
        self.fixture = fixture
        self.fixture_dir = fixture_dir
        self.heartbeat_interval = heartbeat_interval
        self.heartbeats = heartbeats
        self.seed = seed
        self.review_changes = review_changes
        self.spec_changes = spec_changes
        self.expect_snapshot = expect_snapshot
        self.no_files = no_files


class Output:
    """All stdout writes go through here: whole lines, under one lock, flushed."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        self.lock = threading.Lock()
        self.closed = False

    def line(self, message: dict[str, Any]) -> None:
        self.raw(compact(message).encode() + b"\n")

    def chunked(self, data: bytes, size: int, gap: float) -> None:
        """One line written in pieces; the lock keeps heartbeats out of its middle."""
        with self.lock:
            for i in range(0, len(data), size):
                if self.closed:
                    return
                try:
                    self.stream.write(data[i : i + size])
                    self.stream.flush()
                except (BrokenPipeError, ValueError):
                    self.closed = True
                    return
                if gap > 0:
                    time.sleep(gap)

    def raw(self, data: bytes) -> None:
        with self.lock:
            if self.closed:
                return
            try:
                self.stream.write(data)
                self.stream.flush()
            except (BrokenPipeError, ValueError):
                # The reader is gone (lorch died): finish the work at hand so it
                # is cached and journaled, then stop at EOF on stdin.
                self.closed = True
