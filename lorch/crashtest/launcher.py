"""How the harness starts lorch and the scenario's agents.

lorch and the agents only ever run as separate processes: a crash kills nothing
else. lorch itself is forked from a server process that has imported it once
(``forkserver.py``), which saves its start-up for each of the thousands of runs
a matrix makes; it is the same code and the same command line. Every process
group started is tracked, so Ctrl-C can end them all.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
import threading

from lorch import procs
from lorch.crashtest.forkserver import ForkServer
from lorch.launch import PRIVATE_VARS, with_scripts_path

RUN_TIMEOUT = 120.0


def lorch_argv() -> list[str]:
    return [sys.executable, "-m", "lorch"]


def lorch_env(extra: dict[str, str], failpoint: str | None) -> dict[str, str]:
    """lorch's environment for one run: this one's, ``extra``, and the failpoint to arm."""
    env = with_scripts_path({k: v for k, v in os.environ.items() if k not in PRIVATE_VARS})
    env.update(extra)
    if failpoint:
        env["LORCH_CRASH_AT"] = failpoint
    return env


_server_lock = threading.Lock()
_server: ForkServer | None = None


def forkserver() -> ForkServer:
    """The fork server of this process, started on first use, stopped at exit."""
    global _server
    with _server_lock:
        if _server is None:
            _server = ForkServer()
            atexit.register(_server.close)
        return _server


class Procs:
    """Every process group the harness started, so Ctrl-C can end them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.groups: set[int] = set()
        self.stopping = threading.Event()

    def run(self, args: list[str], env: dict[str, str], timeout: float = RUN_TIMEOUT) -> int:
        if self.stopping.is_set():
            raise KeyboardInterrupt
        if args[: len(lorch_argv())] == lorch_argv():
            return self._run_forked(args[len(lorch_argv()) :], env, timeout)
        proc = procs.spawn(
            args, env=env, stdin=procs.DEVNULL, stdout=procs.DEVNULL, stderr=procs.DEVNULL
        )
        with self.lock:
            self.groups.add(proc.pid)
        try:
            rc = procs.wait(proc, timeout)
            if rc is None:
                procs.kill_and_reap(proc)
                return -999
            return rc
        finally:
            with self.lock:
                self.groups.discard(proc.pid)

    def _run_forked(self, args: list[str], env: dict[str, str], timeout: float) -> int:
        server = forkserver()
        pid = server.spawn(args, env)
        with self.lock:
            self.groups.add(pid)
        try:
            rc = server.wait(pid, timeout)
            if rc is None:
                procs.signal_group(pid, signal.SIGKILL)
                server.wait(pid, None)
                return -999
            return rc
        finally:
            with self.lock:
                self.groups.discard(pid)

    def kill_all(self) -> None:
        self.stopping.set()
        with self.lock:
            groups = list(self.groups)
        for g in groups:
            procs.signal_group(g, signal.SIGKILL)


PROCS = Procs()
