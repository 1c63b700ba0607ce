"""Process groups: start, signal, stop, reap, and end orphans (DESIGN.md §5.6, §6).

Everything lorch starts — agents (supervisor), agents under test (conformance),
lorch itself (crash harness) — starts here as the leader of its own process
group, so that one signal reaches every process it forks, and ends here: the
group is signalled and the leader always reaped.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL

_Stream = int | IO[bytes] | None


def spawn(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str | None = None,
    stdin: _Stream = PIPE,
    stdout: _Stream = PIPE,
    stderr: _Stream = PIPE,
    bufsize: int = 0,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` as the leader of a new process group (its pgid is its pid).

    Raises ``OSError`` when it cannot be started; callers turn that into their
    own one-line error naming the agent.
    """
    return subprocess.Popen(
        argv,
        cwd=cwd,
        env=env,
        stdin=stdin,
        stdout=stdout,
        stderr=stderr,
        start_new_session=True,  # own process group: we signal the whole group
        bufsize=bufsize,
    )


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to process group ``pgid``; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait(proc: subprocess.Popen[bytes], timeout: float | None) -> int | None:
    """The exit code of ``proc``, or None if it still runs after ``timeout`` seconds."""
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        return None


def kill_and_reap(proc: subprocess.Popen[bytes], pgid: int | None = None) -> int:
    """SIGKILL the whole group of ``proc`` (default: its own) and reap the leader."""
    signal_group(proc.pid if pgid is None else pgid, signal.SIGKILL)
    return proc.wait()


def stop(
    proc: subprocess.Popen[bytes],
    pgid: int,
    grace: float,
    *,
    close_input: Callable[[], None] | None = None,
    drain: Callable[[float], None] | None = None,
) -> int:
    """End ``proc`` politely, then firmly: EOF, SIGTERM, SIGKILL; always reaped.

    ``close_input`` gives the process its EOF; ``drain(seconds)`` reads its
    output meanwhile (so a process that writes as it exits is not left blocked
    on a full pipe). Stragglers left in the group are killed at the end.
    """
    if close_input is not None:
        close_input()
    started = time.monotonic()
    if drain is not None:
        drain(grace)
    rc = wait(proc, max(0.0, grace - (time.monotonic() - started)))
    if rc is None:
        signal_group(pgid, signal.SIGTERM)
        rc = wait(proc, grace)
    if rc is None:
        signal_group(pgid, signal.SIGKILL)
        rc = proc.wait()
    signal_group(pgid, signal.SIGKILL)
    return rc


def group_alive(pid: int, pgid: int) -> bool:
    """Is ``pid`` alive and still in process group ``pgid`` (not a recycled pid)?"""
    try:
        same = os.getpgid(pid) == pgid
    except (ProcessLookupError, PermissionError):
        return False
    # A zombie (dead, not yet reaped by its new parent) is not alive.
    return same and not is_zombie(pid)


def kill_orphan(
    pid: int,
    pgid: int,
    *,
    started: int | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> bool:
    """SIGKILL an orphaned agent's group and wait until its leader is gone.

    ``started``: the start time recorded with the pid (clock ticks since boot);
    a live process with another start time is a recycled pid, not the orphan,
    and is left alone.
    """
    if not group_alive(pid, pgid):
        return False
    if started is not None and start_time(pid) != started:
        return False
    signal_group(pgid, signal.SIGKILL)
    deadline = clock() + 10
    while clock() < deadline:
        # Reap it if it happens to be our child; otherwise watch /proc.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not Path(f"/proc/{pid}").exists() or is_zombie(pid):
            return True
        time.sleep(0.01)
    return True


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the command name (state first), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()


def is_zombie(pid: int) -> bool:
    fields = _stat_fields(pid)
    return fields is None or fields[0] == "Z"


def start_time(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (None if unknown).

    With the pid and pgid it names one process for good: a recycled pid has a
    later start time.
    """
    fields = _stat_fields(pid)
    # starttime is field 22 of stat; fields[0] is field 3 (the state).
    if fields is None or len(fields) < 20:
        return None
    with contextlib.suppress(ValueError):
        return int(fields[19])
    return None
