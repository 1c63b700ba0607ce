"""The workspace lock (lorch/store/wslock.py): a live lorch is named and refused; what
a killed lorch left holding the lock is waited for."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lorch.store import wslock
from lorch.store.wslock import workspace_lock
from lorch.wire.errors import UsageError

# Takes the lock, says "held", and holds it until its stdin closes.
HOLD = (
    "import sys; from pathlib import Path; from lorch.store.wslock import workspace_lock\n"
    "with workspace_lock(Path(sys.argv[1])):\n"
    "    print('held', flush=True); sys.stdin.read()\n"
)

# Takes the lock, hands its descriptor to a child that reads stdin, and exits
# (as a killed lorch leaves a child it forked, not yet exec'd): the child's pid
# is printed, and it holds the lock until its stdin closes.
LEAVE = (
    "import subprocess, sys; from pathlib import Path; import lorch.store.wslock as w\n"
    "import os\n"
    "(Path(sys.argv[1]) / 'state').mkdir(exist_ok=True)\n"
    "fd = os.open(Path(sys.argv[1]) / 'state' / 'lock', os.O_RDWR | os.O_CREAT, 0o600)\n"
    "w.acquire(fd, Path(sys.argv[1]))\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import sys; sys.stdin.read()'],\n"
    "                         pass_fds=(fd,), stdin=sys.stdin)\n"
    "print(os.getpid(), flush=True)\n"
    "os._exit(0)\n"
)


def hold(ws: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(ws)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def release(holder: subprocess.Popen[str]) -> None:
    assert holder.stdin is not None and holder.stdout is not None
    holder.stdin.close()
    holder.wait()
    holder.stdout.close()


def leave(ws: Path) -> tuple[int, int]:
    """The pid of a lorch that has ended, and the pipe whose closing ends the
    child it left holding the lock."""
    r, w = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-c", LEAVE, str(ws)], stdin=r, stdout=subprocess.PIPE, text=True
    )
    os.close(r)
    assert proc.stdout is not None
    owner = int(proc.stdout.readline().split()[0])
    proc.stdout.close()
    proc.wait()
    return owner, w


def test_the_lock_file_is_never_written(tmp_path: Path) -> None:
    """Its holder comes from the kernel's lock table: a crash state never
    differs by what a lock file says."""
    with workspace_lock(tmp_path):
        assert (tmp_path / "state" / "lock").read_bytes() == b""


def test_a_live_lorch_is_named_and_refused_at_once(tmp_path: Path) -> None:
    holder = hold(tmp_path)
    try:
        with pytest.raises(UsageError) as e, workspace_lock(tmp_path, wait_s=600):
            pass
        assert str(e.value) == (
            f"{tmp_path}: another lorch process (pid {holder.pid}) is running in this workspace"
        )
    finally:
        release(holder)
    with workspace_lock(tmp_path):  # and once it has ended, the lock is free
        pass


def test_resume_says_which_lorch_runs_in_one_line(tmp_path: Path) -> None:
    holder = hold(tmp_path)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "lorch", "resume", "--workspace", str(tmp_path)],
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
    finally:
        release(holder)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"lorch: {tmp_path}: another lorch process (pid {holder.pid}) is running in this workspace"
    ]


def test_what_an_ended_lorch_left_holding_the_lock_is_waited_for(tmp_path: Path) -> None:
    owner, keeper = leave(tmp_path)
    said: list[str] = []
    waiting = threading.Event()
    taken = threading.Event()

    def say(line: str) -> None:
        said.append(line)
        waiting.set()

    def take() -> None:
        with workspace_lock(tmp_path, say, wait_s=600):
            taken.set()

    t = threading.Thread(target=take)
    t.start()
    assert waiting.wait(60)
    assert not taken.is_set()  # it waits while the child holds the lock
    os.close(keeper)  # the child ends, and with it the lock it held
    t.join(60)
    assert taken.is_set()
    assert said == [
        f"[lorch] waiting for the workspace lock: lorch pid {owner} has ended "
        "but a process it started still holds it"
    ]


def refused_after_leave(ws: Path, wait_s: float) -> tuple[int, str]:
    """The pid of a lorch that ended leaving its lock held, and the refusal to take it."""
    owner, keeper = leave(ws)
    try:
        with pytest.raises(UsageError) as e, workspace_lock(ws, wait_s=wait_s):
            pass
    finally:
        os.close(keeper)
    return owner, str(e.value)


def test_a_holder_that_never_lets_go_is_one_error_after_the_wait(tmp_path: Path) -> None:
    owner, refusal = refused_after_leave(tmp_path, 0.2)
    assert refusal == (
        f"{tmp_path}: the workspace lock (state/lock) is still held by a process of lorch pid "
        f"{owner}, which has ended, after 0.2 s; end it, then run lorch again"
    )


def test_without_the_kernels_lock_table_a_held_lock_is_refused_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(wslock, "PROC_LOCKS", tmp_path / "no-such-table")
    _, refusal = refused_after_leave(tmp_path, 600)
    assert refusal == f"{tmp_path}: another lorch process is running in this workspace"
