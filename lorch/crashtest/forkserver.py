"""A warm lorch for the crash harness: fork a process that has imported lorch once.

A crash matrix runs lorch thousands of times; most of each start is Python
importing lorch. The server imports it once and forks a child per run; the child
is what ``python -m lorch ARGS`` would be (its own process group, the given
environment, stdin/stdout on /dev/null, stderr appended to a given file or on
/dev/null), so lorch's code path is the same.

Protocol, one JSON object per line. Harness → server: ``{"args": [...], "env":
{...}, "stderr": PATH or null}``. Server → harness: ``{"pid": N}`` at once, and
``{"exit": N, "rc": R}`` when that child ends (``R`` negative for a signal, as
with ``subprocess``). The server is single-threaded, so forking is safe; it
ends at EOF on its stdin.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import selectors
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any

from lorch.wire.errors import LorchError

# lorch.agents.acp.port: the ACP SDK is slow to import; a scenario with ACP roles
# needs it in every run. The tools' CLIs: the crash harness runs its own commands.
PRELOAD = (
    "lorch.app.cli",
    "lorch.app.runner",
    "lorch.app.verify",
    "lorch.engine.transcript",
    "lorch.agents.acp.port",
    "lorch.crashtest.cli",
    "lorch.conformance.cli",
)


def _child(
    args: list[str], env: dict[str, str], stderr: str | None, close: tuple[int, ...]
) -> None:
    """In the forked child: become ``lorch ARGS`` and never return."""
    rc = 1
    try:
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in close:
            with contextlib.suppress(OSError):
                os.close(fd)
        with contextlib.suppress(OSError):
            os.setpgid(0, 0)  # its own process group (the server sets it too: no race)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        if stderr is not None:
            with contextlib.suppress(OSError):
                os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), 2)
        os.environ.clear()
        os.environ.update(env)
        from lorch.app.cli import main

        rc = main(args)
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(rc)


def serve() -> None:
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the harness decides when we stop
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    out = sys.stdout.buffer

    def say(msg: dict[str, Any]) -> None:
        out.write(json.dumps(msg).encode() + b"\n")
        out.flush()

    def reap() -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            say({"exit": pid, "rc": os.waitstatus_to_exitcode(status)})

    sel = selectors.DefaultSelector()
    sel.register(0, selectors.EVENT_READ)
    sel.register(wake_r, selectors.EVENT_READ)
    pending = b""
    while True:
        for key, _ in sel.select():
            if key.fd == wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(wake_r, 4096):
                        pass
                reap()
                continue
            data = os.read(0, 65536)
            if not data:
                reap()
                return
            pending += data
            *lines, pending = pending.split(b"\n")
            for line in lines:
                req = json.loads(line)
                pid = os.fork()
                if pid == 0:
                    _child(req["args"], req["env"], req.get("stderr"), (wake_r, wake_w))
                with contextlib.suppress(OSError):
                    os.setpgid(pid, pid)
                say({"pid": pid})
        reap()


class ForkServer:
    """The harness's side: start lorch runs, wait for them, from any thread."""

    def __init__(self) -> None:
        # Its last line explains a server that stopped; closed in close().
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        self._proc = subprocess.Popen(
            [sys.executable, "-c", "from lorch.crashtest.forkserver import serve; serve()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
        )
        self._send_lock = threading.Lock()
        self._pids: queue.Queue[int | None] = queue.Queue()
        self._exits: dict[int, int] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True, name="forkserver")
        self._reader.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            msg = json.loads(line)
            if "pid" in msg:
                self._pids.put(int(msg["pid"]))
            else:
                with self._cond:
                    self._exits[int(msg["exit"])] = int(msg["rc"])
                    self._cond.notify_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._pids.put(None)

    def spawn(self, args: list[str], env: dict[str, str], stderr: str | None = None) -> int:
        """Fork ``lorch ARGS`` with ``env`` (its stderr appended to the file
        ``stderr``, if given); return its pid (also its process group)."""
        assert self._proc.stdin is not None
        req = {"args": args, "env": env, "stderr": stderr}
        with self._send_lock:
            try:
                self._proc.stdin.write(json.dumps(req).encode() + b"\n")
                self._proc.stdin.flush()
            except OSError:  # it is gone (a broken pipe): say why
                raise self._stopped() from None
            pid = self._pids.get()
        if pid is None:
            raise self._stopped()
        return pid

    def wait(self, pid: int, timeout: float | None) -> int | None:
        """The child's exit code, or None if it still runs after ``timeout`` seconds."""
        with self._cond:
            self._cond.wait_for(lambda: pid in self._exits or self._closed, timeout)
            if pid in self._exits:
                return self._exits.pop(pid)
            if self._closed:
                raise self._stopped()
            return None

    def _stopped(self) -> LorchError:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(5)  # its last words are all written once it has exited
        self._stderr.seek(0)
        lines = self._stderr.read().decode(errors="replace").strip().splitlines()
        why = f": {lines[-1]}" if lines else ""
        return LorchError(f"the lorch fork server stopped{why}")

    def close(self) -> None:
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()
        self._proc.wait()
        # A child that never got to close its copy of our pipe (stopped at once)
        # must not keep us waiting for EOF.
        self._reader.join(timeout=5)
        if not self._reader.is_alive() and self._proc.stdout is not None:
            self._proc.stdout.close()
        self._stderr.close()
