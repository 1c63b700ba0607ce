"""How the harness starts lorch and the scenario's agents.

lorch and the agents only ever run as separate processes: a crash kills nothing
else. lorch itself is forked from a server process that has imported it once
(``forkserver.py``), which saves its start-up for each of the thousands of runs
a matrix makes; it is the same code and the same command line. Every process
group started is tracked, so Ctrl-C can end them all.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from lorch.agents import procs
from lorch.app.launch import PRIVATE_VARS, with_scripts_path
from lorch.crashtest.forkserver import ForkServer

RUN_TIMEOUT = 120.0
TIMED_OUT = -999  # the exit code of a run killed for outliving its timeout


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


@dataclass
class Trail:
    """The lorch runs of one crash point: their stderr (appended to ``log``) and
    exit codes, so a failure can say how the last run ended."""

    log: Path
    runs: list[tuple[str, int]] = field(default_factory=list)

    def add(self, verb: str, rc: int, stderr: bytes) -> None:
        """A run made elsewhere (its stderr captured there)."""
        with contextlib.suppress(OSError), open(self.log, "ab") as f:
            f.write(stderr)
        self.runs.append((verb, rc))

    def last(self) -> str:
        """How the last run ended, in one line: its verb, exit code and last stderr line."""
        if not self.runs:
            return "no lorch run was started"
        verb, rc = self.runs[-1]
        if rc == TIMED_OUT:
            how = f"still running after {RUN_TIMEOUT:g} s, killed"
        elif rc < 0:
            how = f"killed by signal {-rc}"
        else:
            how = f"exit {rc}"
        try:
            lines = self.log.read_bytes().decode("utf-8", "replace").strip().splitlines()
        except OSError:
            lines = []
        said = f": {lines[-1].strip()}" if lines else ", nothing on stderr"
        return f"last lorch run, {verb} ({len(self.runs)} in all): {how}{said}"


class Procs:
    """Every process group the harness started, so Ctrl-C can end them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.groups: set[int] = set()
        self.stopping = threading.Event()

    def run(
        self,
        args: list[str],
        env: dict[str, str],
        timeout: float = RUN_TIMEOUT,
        trail: Trail | None = None,
    ) -> int:
        """Run ``args`` to its end (killed after ``timeout``: TIMED_OUT); its exit code.

        With a ``trail``, its stderr is appended to the trail's log and its exit
        code kept there."""
        if self.stopping.is_set():
            raise KeyboardInterrupt
        log = None if trail is None else str(trail.log)
        lorch = args[: len(lorch_argv())] == lorch_argv()
        if lorch:
            rc = self._run_forked(args[len(lorch_argv()) :], env, timeout, log)
        else:
            rc = self._run_spawned(args, env, timeout, log)
        if trail is not None:
            trail.runs.append((args[len(lorch_argv())] if lorch else Path(args[0]).name, rc))
        return rc

    def _run_spawned(
        self, args: list[str], env: dict[str, str], timeout: float, log: str | None
    ) -> int:
        with contextlib.ExitStack() as stack:
            err = procs.DEVNULL if log is None else stack.enter_context(open(log, "ab"))
            proc = procs.spawn(args, env=env, stdin=procs.DEVNULL, stdout=procs.DEVNULL, stderr=err)
        with self.lock:
            self.groups.add(proc.pid)
        try:
            rc = procs.wait(proc, timeout)
            if rc is None:
                procs.kill_and_reap(proc)
                return TIMED_OUT
            return rc
        finally:
            with self.lock:
                self.groups.discard(proc.pid)

    def _run_forked(
        self, args: list[str], env: dict[str, str], timeout: float, log: str | None
    ) -> int:
        server = forkserver()
        pid = server.spawn(args, env, log)
        with self.lock:
            self.groups.add(pid)
        try:
            rc = server.wait(pid, timeout)
            if rc is None:
                procs.signal_group(pid, signal.SIGKILL)
                server.wait(pid, None)
                return TIMED_OUT
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
