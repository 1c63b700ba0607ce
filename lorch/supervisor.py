"""Agent processes: start, drain, watch, stop (DESIGN.md §6).

Each agent runs in its own process group. Its stdout is read by the runner's
own thread through an :class:`Inbox` (one ``epoll`` over every agent), whenever
lorch waits — for an answer, out a backoff, or for an agent to exit — so a
chatty agent never blocks on a full pipe while lorch waits for it, and an answer
reaches the runner without a hand-off between threads. Stderr has a reader
thread for the whole life of the process and goes to the agent's log file.
Time comes from an injectable clock, so the watchdog and backoff logic is
tested without waiting.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import random
import selectors
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from lorch import failpoint, procs, protocol
from lorch.errors import AgentError, FramingError, SchemaError

SECRET_SUFFIXES = ("_TOKEN", "_KEY", "_SECRET")


class Clock(Protocol):
    def __call__(self) -> float: ...


def secret_values(*envs: dict[str, str]) -> list[str]:
    """Values of variables named ``*_TOKEN``, ``*_KEY``, ``*_SECRET`` (never recorded)."""
    out = set()
    for env in envs:
        for k, v in env.items():
            if k.upper().endswith(SECRET_SUFFIXES) and len(v) >= 4:
                out.add(v)
    return sorted(out, key=len, reverse=True)


class Redactor:
    def __init__(self, secrets: list[str]) -> None:
        self.secrets = secrets
        self._bytes = [s.encode() for s in secrets]

    def text(self, s: str) -> str:
        for v in self.secrets:
            s = s.replace(v, "***")
        return s

    def raw(self, b: bytes) -> bytes:
        for v in self._bytes:
            b = b.replace(v, b"***")
        return b


@dataclass
class Backoff:
    """Exponential backoff with full jitter: uniform(0, min(cap, initial·factor^n))."""

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def ceiling(self, n: int) -> float:
        return float(min(self.cap, self.initial * self.factor**n))

    def delay(self, n: int) -> float:
        return self.rng.uniform(0.0, self.ceiling(n))


@dataclass
class Watchdog:
    """Heartbeat and timeout bookkeeping for one agent, on an injected clock."""

    clock: Clock
    interval: float
    misses: int = 3
    last_beat: float = 0.0
    deadline: float | None = None

    def __post_init__(self) -> None:
        self.last_beat = self.clock()

    def beat(self) -> None:
        self.last_beat = self.clock()

    def arm(self, timeout: float) -> None:
        self.deadline = self.clock() + timeout

    def disarm(self) -> None:
        self.deadline = None

    def unhealthy(self) -> bool:
        return self.clock() - self.last_beat > self.interval * self.misses

    def timed_out(self) -> bool:
        return self.deadline is not None and self.clock() > self.deadline

    def next_check_in(self) -> float:
        """Seconds until the earliest moment a verdict could change."""
        now = self.clock()
        t = self.last_beat + self.interval * self.misses - now
        if self.deadline is not None:
            t = min(t, self.deadline - now)
        return max(0.0, t)


@dataclass
class Incoming:
    """One thing an agent said on stdout, as the runner sees it."""

    role: str
    generation: int
    message: dict[str, Any] | None = None
    error: FramingError | SchemaError | None = None
    raw_size: int = 0
    eof: bool = False


class Inbox:
    """Every running agent's stdout, read by the thread that waits on it.

    ``get`` returns the next item, reading agents' stdout (one ``epoll``) for at
    most ``timeout`` seconds when none is buffered; ``wait`` reads for the whole
    time, buffering what comes, so that a sleeping runner still drains its agents.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._items: collections.deque[Incoming] = collections.deque()

    def add(self, proc: AgentProcess) -> None:
        self._selector.register(proc.stdout_fd, selectors.EVENT_READ, proc)

    def remove(self, proc: AgentProcess) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(proc.stdout_fd)

    def get(self, timeout: float) -> Incoming | None:
        """The next item, or None when ``timeout`` seconds pass without one.

        Heartbeats, logs and partial lines are read on the way, without
        returning early.
        """
        if self._items:
            return self._items.popleft()
        end = time.monotonic() + timeout
        while True:
            self._read(max(end - time.monotonic(), 0.0))
            if self._items:
                return self._items.popleft()
            if time.monotonic() >= end:
                return None

    def wait(self, seconds: float, stop: threading.Event | None = None) -> None:
        """Read agents' stdout for ``seconds`` (or until ``stop`` is set)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and not (stop and stop.is_set()):
            self._read(min(left, 0.5))

    def _read(self, timeout: float) -> None:
        if not self._selector.get_map():
            time.sleep(max(timeout, 0.0))  # no agent to hear from
            return
        for key, _ in self._selector.select(max(timeout, 0.0)):
            proc: AgentProcess = key.data
            proc.read_stdout(self._items.append)
            if proc.stdout_eof:
                self.remove(proc)

    def close(self) -> None:
        self._selector.close()


class AgentProcess:
    """One running agent. ``generation`` tells its messages from a predecessor's."""

    def __init__(
        self,
        role: str,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        inbox: Inbox,
        log_path: Path,
        redactor: Redactor,
        generation: int,
        clock: Clock = time.monotonic,
        heartbeat_interval: float = 10.0,
        heartbeat_misses: int = 3,
        on_stderr: Callable[[str], None] | None = None,
    ) -> None:
        self.role = role
        self._on_stderr = on_stderr
        self.argv = argv
        self.generation = generation
        self._inbox = inbox
        self._redactor = redactor
        self._log_path = log_path
        self._log_lock = threading.Lock()
        self._send_lock = threading.Lock()
        log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._log: IO[str] = open(log_path, "a", encoding="utf-8")  # noqa: SIM115
        os.chmod(log_path, 0o600)
        try:
            self.proc = procs.spawn(argv, cwd=cwd, env=env)
        except OSError as e:
            self._log.close()
            raise AgentError(f"agent {role}: cannot start {argv[0]!r}: {e.strerror}") from None
        self.pid = self.proc.pid
        self.last_stderr = ""
        self.pgid = os.getpgid(self.pid)
        failpoint.agent_groups[role] = self.pgid
        self.watchdog = Watchdog(clock, heartbeat_interval, heartbeat_misses)
        assert self.proc.stdout is not None
        self.stdout_fd = self.proc.stdout.fileno()
        self.stdout_eof = False
        self._splitter = protocol.LineSplitter()
        inbox.add(self)
        self._threads = [
            threading.Thread(target=self._read_stderr, daemon=True, name=f"{role}-stderr"),
        ]
        for t in self._threads:
            t.start()

    # -- reading ------------------------------------------------------------

    def read_stdout(self, put: Callable[[Incoming], None]) -> None:
        """One read of the agent's stdout (which is readable); each item to ``put``.

        Heartbeats and ``log`` messages are dealt with here; at EOF a partial
        last line is a framing error, then comes an ``eof`` item.
        """
        try:
            data = os.read(self.stdout_fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            for item in self._splitter.feed(data):
                if isinstance(item, FramingError):
                    put(Incoming(self.role, self.generation, error=item, raw_size=item.size))
                else:
                    self._deliver(self._redactor.raw(item), put)
            return
        self.stdout_eof = True
        tail = self._splitter.pending()
        if tail:
            error = FramingError(
                f"partial line of {len(tail)} bytes at exit (no newline)",
                size=len(tail),
                prefix=tail[:80],
            )
            put(Incoming(self.role, self.generation, error=error, raw_size=len(tail)))
        put(Incoming(self.role, self.generation, eof=True))

    def _deliver(self, line: bytes, put: Callable[[Incoming], None]) -> None:
        if not line.strip():
            return
        try:
            message = protocol.parse_line(line)
            kind = protocol.validate_message(message)
        except (FramingError, SchemaError) as e:
            if isinstance(e, SchemaError):
                e = FramingError(str(e), size=len(line), prefix=line[:80])
            put(Incoming(self.role, self.generation, error=e, raw_size=len(line)))
            return
        if kind == "heartbeat":
            self.watchdog.beat()
            return
        if kind == "log":
            self.write_log({"stream": "log", **message})
            return
        put(Incoming(self.role, self.generation, message=message, raw_size=len(line)))

    def _drain_stdout(self, timeout: float | None) -> None:
        """Read stdout to EOF, for at most ``timeout`` seconds; what it said is dropped.

        Used while the agent is being stopped: its last words may be logs (kept)
        but no answer is acted on any more.
        """
        end = None if timeout is None else time.monotonic() + timeout
        while not self.stdout_eof:
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                return
            ready = _readable(self.stdout_fd, left)
            if ready:
                self.read_stdout(lambda _item: None)

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        splitter = protocol.LineSplitter()
        fd = self.proc.stderr.fileno()
        for data in protocol.read_chunks(fd):
            lines = []
            for item in splitter.feed(data):
                if isinstance(item, FramingError):
                    lines.append(f"<{item.size} bytes: line too long>")
                else:
                    lines.append(item.decode("utf-8", "replace"))
            self._write_stderr(lines)
        tail = splitter.pending()
        if tail:
            self._write_stderr([tail.decode("utf-8", "replace")])

    def _write_stderr(self, lines: list[str]) -> None:
        if not lines:
            return
        self.last_stderr = lines[-1][:200]
        if self._on_stderr is not None:
            for s in lines:
                self._on_stderr(f"[{self.role} stderr] {self._redactor.text(s)}")
        at = protocol.now_rfc3339()
        text = "".join(
            json.dumps({"at": at, "stream": "stderr", "line": self._redactor.text(s)}) + "\n"
            for s in lines
        )
        with self._log_lock:
            self._log.write(text)
            self._log.flush()

    def write_log(self, entry: dict[str, Any]) -> None:
        text = self._redactor.text(json.dumps({"at": protocol.now_rfc3339(), **entry}))
        with self._log_lock:
            self._log.write(text + "\n")
            self._log.flush()

    # -- writing ------------------------------------------------------------

    def send(self, data: bytes) -> bool:
        """Write one framed message; False if the agent's stdin is gone."""
        assert self.proc.stdin is not None
        with self._send_lock:
            try:
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                return False
        return True

    # -- stopping -----------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close_input(self) -> None:
        """EOF on the agent's stdin: a well-behaved agent exits."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()

    def stop(self, grace: float = 2.0) -> int | None:
        """EOF, then SIGTERM, then SIGKILL to the group; always reaped.

        Its stdout is read meanwhile, so an agent that writes as it exits is
        not left blocked on a full pipe.
        """
        rc = procs.stop(
            self.proc, self.pgid, grace, close_input=self.close_input, drain=self._drain_stdout
        )
        self._finish()
        return rc

    def kill(self) -> int | None:
        rc = procs.kill_and_reap(self.proc, self.pgid)
        self._finish()
        return rc

    def _finish(self) -> None:
        if failpoint.agent_groups.get(self.role) == self.pgid:
            del failpoint.agent_groups[self.role]
        self._inbox.remove(self)
        # The group is dead: what is left in the pipe is read to EOF (its log
        # lines kept), unless a process outside the group still holds it open.
        with contextlib.suppress(OSError):
            os.set_blocking(self.stdout_fd, False)
            self._drain_stdout(0.5)
        for t in self._threads:
            t.join(timeout=5)
        with self._log_lock:
            self._log.close()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()


READ_SIZE = 65536


def _readable(fd: int, timeout: float | None) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))
