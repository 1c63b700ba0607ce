"""One lorch process per workspace: the ``state/lock`` flock and its owner.

The lock is an ``flock`` on ``state/lock``, so it dies with its holder. Its
file names the holder (pid and start time) for two reasons:

- a refusal can say which process runs there;
- a lorch that was killed (``kill -9``, the OOM killer) may leave a child
  that still holds the lock for a moment: one forked but not yet exec'd (it
  has a copy of every descriptor until then). Its owner is gone, so that
  holder is only letting go: a ``lorch resume`` right after the kill waits for
  it (at most ``LOCK_WAIT_S``) instead of refusing to start
  (docs/decisions.md D41).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lorch import failpoint
from lorch.atomic import ensure_dir, remove_stale_temps
from lorch.errors import StorageError, UsageError
from lorch.procs import start_time

# Where lorch's atomic writes leave their temp files (never the agents' folders).
LORCH_TEMP_DIRS = ("state", "receipts", "snapshots", "transcripts", "events", "logs")

# How long a lock left by a lorch that has ended may take to be let go.
LOCK_WAIT_S = 30.0
_POLL_S = 0.01


def _owner(fd: int) -> tuple[int, int] | None:
    """The (pid, start time) the lock file names, or None (empty or not ours)."""
    try:
        text = os.pread(fd, 64, 0).decode("ascii")
        pid, started = (int(v) for v in text.split())
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return pid, started


def _alive(owner: tuple[int, int] | None) -> bool:
    return owner is not None and start_time(owner[0]) == owner[1]


def _claim(fd: int) -> None:
    """Name this process in the lock file (it holds the lock)."""
    me = f"{os.getpid()} {start_time(os.getpid()) or 0}\n".encode()
    with contextlib.suppress(OSError):  # the name only serves messages and waits
        os.ftruncate(fd, 0)
        os.pwrite(fd, me, 0)


def acquire(
    fd: int,
    workspace: Path,
    say: Callable[[str], None] | None = None,
    wait_s: float = LOCK_WAIT_S,
) -> None:
    """Take the flock on ``fd`` or raise UsageError: a live lorch holds it, or
    what a gone one left still holds it after ``wait_s`` seconds."""
    deadline: float | None = None
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pass
        else:
            _claim(fd)
            return
        owner = _owner(fd)
        if _alive(owner):
            assert owner is not None
            raise UsageError(
                f"{workspace}: another lorch process (pid {owner[0]}) is running in this workspace"
            )
        now = time.monotonic()
        if deadline is None:
            # Its owner has ended (or has yet to write its name: the next look
            # tells). What holds the lock now is a child of it letting go.
            deadline = now + wait_s
            if say is not None and owner is not None:
                say(
                    f"[lorch] waiting for the workspace lock: lorch pid {owner[0]} has ended "
                    "but a process it started still holds it"
                )
        elif now >= deadline:
            who = f" of lorch pid {owner[0]}, which has ended," if owner is not None else ""
            raise UsageError(
                f"{workspace}: the workspace lock (state/lock) is still held by a process{who} "
                f"after {wait_s:g} s; end it, then run lorch again"
            )
        time.sleep(_POLL_S)


@contextlib.contextmanager
def workspace_lock(
    workspace: Path, say: Callable[[str], None] | None = None, wait_s: float = LOCK_WAIT_S
) -> Iterator[None]:
    """One lorch process per workspace at a time."""
    ensure_dir(workspace / "state")
    path = workspace / "state" / "lock"
    try:
        failpoint.io_fault(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StorageError(f"cannot open the lock file {path}: {e.strerror}") from None
    try:
        acquire(fd, workspace, say, wait_s)
        # Holding the lock, no other lorch writes here: any temp file of an
        # atomic write is a crashed one's (docs/decisions.md D29).
        remove_stale_temps([workspace / d for d in LORCH_TEMP_DIRS])
        yield
    finally:
        os.close(fd)
