"""Process groups: start, signal, stop, reap, and end orphans (DESIGN.md §5.6, §6).

Everything lorch starts that may outlive the call that starts it — agents
(NDJSON, :mod:`lorch.agents.ndjson`; ACP, :mod:`lorch.agents.acp.port`), an
ACP agent's terminals and the task's test command (:mod:`lorch.agents.acp`),
agents under test (conformance), lorch itself (crash harness) — starts here
(:func:`spawn`, or :func:`spawn_async` on an event loop) as the leader of its
own process group, so that one signal reaches every process it forks, and
ends here: the group is signalled and the leader always reaped. Short helpers
lorch waits for (git, the sandbox's probe) stay in lorch's own group, which
:func:`end_strays` spares.

A process can leave its group (``setsid``). So ``lorch run`` makes itself a
child subreaper (:func:`become_subreaper`, Linux): whatever an agent started
and left behind is re-parented to lorch instead of to init, and
:func:`end_strays` — called whenever an agent exits or is stopped, and when
lorch ends — kills the children lorch has that it did not start itself. The
processes lorch starts are known by their pid and start time (:func:`spawn`,
:func:`spawn_async`); a start under way makes ``end_strays`` wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import IO, Any

PIPE = subprocess.PIPE
DEVNULL = subprocess.DEVNULL
STDOUT = subprocess.STDOUT

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
    with _starting() as own:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # own process group: we signal the whole group
            bufsize=bufsize,
        )
        own(proc.pid)
    return proc


async def spawn_async(
    argv: list[str],
    *,
    env: Mapping[str, str],
    cwd: Path | str | None = None,
    stdin: _Stream = PIPE,
    stdout: _Stream = PIPE,
    stderr: _Stream = PIPE,
    limit: int | None = None,
) -> asyncio.subprocess.Process:
    """:func:`spawn` for an event loop (``asyncio.create_subprocess_exec``): the leader
    of a new process group, known to :func:`end_strays` as one of lorch's own.

    ``limit``: the longest line its stream readers take (asyncio's default if None).
    Raises ``OSError`` when it cannot be started.
    """
    extra: dict[str, Any] = {} if limit is None else {"limit": limit}
    with _starting() as own:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,  # own process group: we signal the whole group
            **extra,
        )
        own(proc.pid)
    return proc


# -- strays: what an agent left behind, re-parented to lorch ---------------------------

_PR_SET_CHILD_SUBREAPER = 36  # <linux/prctl.h>
_known = threading.Condition()
_own: dict[int, int | None] = {}  # pid -> start time of each process lorch started
_starts = 0  # starts under way (a pid not known yet)
_subreaper = False


@contextlib.contextmanager
def _starting() -> Iterator[Callable[[int], None]]:
    global _starts
    with _known:
        _starts += 1
    try:
        yield _adopt
    finally:
        with _known:
            _starts -= 1
            _known.notify_all()


def _adopt(pid: int) -> None:
    with _known:
        _own[pid] = start_time(pid)


def become_subreaper() -> bool:
    """Adopt every orphaned descendant (``PR_SET_CHILD_SUBREAPER``); False where it cannot.

    From then on :func:`end_strays` ends them. Call it before starting anything.
    """
    global _subreaper
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ok = bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        ok = False
    _subreaper = _subreaper or ok
    return ok


def end_strays(grace: float = 5.0) -> list[int]:
    """SIGKILL and reap every child of lorch it did not start; the pids ended.

    Only for a subreaper (:func:`become_subreaper`; otherwise nothing is done):
    its children are then the processes it started plus every orphan of their
    descendants. Spared: the processes it started (same pid and start time),
    members of their groups while a leader lives (they end with the group),
    and lorch's own process group (helpers such as git, which an agent's
    descendant, in another session, cannot join). A killed stray's own
    children come to lorch in turn, so this goes on until none is left.
    """
    if not _subreaper:
        return []
    ended: list[int] = []
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        with _known:
            # A process being started is a child whose pid is not known yet.
            if not _known.wait_for(lambda: _starts == 0, deadline - time.monotonic()):
                break
            strays = _strays()
            for pid, pgid in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    if pgid == pid:  # its group too: one more generation at once
                        os.killpg(pgid, signal.SIGKILL)
        if not strays:
            break
        for pid, _ in strays:
            _reap(pid, deadline)
            ended.append(pid)
    return ended


def _strays() -> list[tuple[int, int]]:
    """(pid, pgid) of each child of this process that it did not start (``_known`` held)."""
    me, my_group = os.getpid(), os.getpgrp()
    children: dict[int, tuple[int, int | None]] = {}  # pid -> (pgid, start time)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is None or len(fields) < 20 or fields[1] != str(me):
            continue
        with contextlib.suppress(ValueError):
            children[int(entry.name)] = (int(fields[2]), int(fields[19]))
    for pid in [p for p, t in _own.items() if p not in children or children[p][1] != t]:
        del _own[pid]  # reaped (a pid that came back is not the process lorch started)
    groups = {children[pid][0] for pid in _own}
    return [
        (pid, pgid)
        for pid, (pgid, _) in children.items()
        if pid not in _own and pgid != my_group and pgid not in groups
    ]


def _reap(pid: int, deadline: float) -> None:
    """Reap a killed stray (waiting on its pidfd until ``deadline`` at most)."""
    with contextlib.suppress(OSError):
        fd = os.pidfd_open(pid)
        try:
            select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        finally:
            os.close(fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


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
