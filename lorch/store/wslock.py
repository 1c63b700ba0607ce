"""One lorch process per workspace: the ``state/lock`` flock, and who holds it.

The lock is an ``flock`` on ``state/lock``, so it dies with its holders. When
it is taken, the kernel's lock table (``/proc/locks``) names the process that
took it, and that answers two questions:

- which lorch runs there, for the refusal;
- whether that lorch is still alive. A lorch that was killed (``kill -9``, the
  OOM killer) may leave a child that still holds the lock for a moment: one
  forked but not yet exec'd, which has a copy of every descriptor until then.
  Its locker is gone, so that holder is only letting go: a ``lorch resume``
  right after the kill waits for it (at most ``LOCK_WAIT_S``) instead of
  refusing to start (docs/decisions.md D41).

Nothing is written to the lock file: what lorch writes is what the crash
harness models, and the lock's holder is not part of any crash state.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from lorch.store import failpoint, layout
from lorch.store.atomic import ensure_dir, remove_stale_temps
from lorch.store.layout import LORCH_DIRS
from lorch.wire.errors import StorageError, UsageError

# How long a lock left by a lorch that has ended may take to be let go.
LOCK_WAIT_S = 30.0
_POLL_S = 0.01
PROC_LOCKS = Path("/proc/locks")


def locker(st: os.stat_result) -> int | None:
    """The pid that took the flock on the file ``st`` describes (from the
    kernel's lock table; it stays there while any inherited copy holds it)."""
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = PROC_LOCKS.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        # "N: FLOCK ADVISORY WRITE PID MAJ:MIN:INO 0 EOF"; a waiter's has "->" second.
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want:
            with contextlib.suppress(ValueError):
                pid = int(fields[4])
                return pid if pid > 0 else None  # 0: not in our pid namespace
    return None


def has_open(pid: int, st: os.stat_result) -> bool:
    """Does process ``pid`` have the file ``st`` describes open?"""
    fds = Path(f"/proc/{pid}/fd")
    try:
        names = os.listdir(fds)
    except OSError:
        return False
    for name in names:
        with contextlib.suppress(OSError):
            other = os.stat(fds / name)
            if (other.st_dev, other.st_ino) == (st.st_dev, st.st_ino):
                return True
    return False


def acquire(
    fd: int,
    workspace: Path,
    say: Callable[[str], None] | None = None,
    wait_s: float = LOCK_WAIT_S,
) -> None:
    """Take the flock on ``fd`` or raise UsageError: a live lorch holds it, or
    what a gone one left still holds it after ``wait_s`` seconds."""
    deadline: float | None = None
    said = False
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        st = os.fstat(fd)
        pid = locker(st)
        if pid is None and not PROC_LOCKS.exists():
            raise UsageError(f"{workspace}: another lorch process is running in this workspace")
        if pid is not None and has_open(pid, st):
            raise UsageError(
                f"{workspace}: another lorch process (pid {pid}) is running in this workspace"
            )
        # The process that took the lock has ended (or let go meanwhile: the
        # next try tells). What holds it now is a child of it letting go.
        now = time.monotonic()
        deadline = now + wait_s if deadline is None else deadline
        if pid is not None and not said and say is not None:
            said = True
            say(
                f"[lorch] waiting for the workspace lock: lorch pid {pid} has ended "
                "but a process it started still holds it"
            )
        if now >= deadline:
            who = f" of lorch pid {pid}, which has ended," if pid is not None else ""
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
    ensure_dir(workspace / layout.STATE)
    path = workspace / layout.LOCK
    try:
        failpoint.io_fault(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as e:
        raise StorageError(f"cannot open the lock file {path}: {e.strerror}") from None
    try:
        acquire(fd, workspace, say, wait_s)
        # Holding the lock, no other lorch writes here: any temp file of an
        # atomic write is a crashed one's (docs/decisions.md D29).
        remove_stale_temps([workspace / d for d in LORCH_DIRS])
        yield
    finally:
        os.close(fd)
