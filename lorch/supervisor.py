"""Agent processes: start, drain, watch, stop (DESIGN.md §6).

Each agent runs in its own process group. Its stdout and stderr each have a
reader thread for the whole life of the process, so a chatty agent can never
block on a full pipe; stdout lines go to one queue the runner consumes, stderr
lines to the agent's log file. Time comes from an injectable clock, so the
watchdog and backoff logic is tested without waiting.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol

from lorch import failpoint, protocol
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


# Items the reader threads put on the runner's queue: (role, generation, item)
EOF = object()


@dataclass
class Incoming:
    role: str
    generation: int
    message: dict[str, Any] | None = None
    error: FramingError | SchemaError | None = None
    raw_size: int = 0
    eof: bool = False


class AgentProcess:
    """One running agent. ``generation`` tells its messages from a predecessor's."""

    def __init__(
        self,
        role: str,
        argv: list[str],
        *,
        cwd: Path,
        env: dict[str, str],
        inbox: queue.Queue[Incoming],
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
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                start_new_session=True,  # own process group: we signal the whole group
                bufsize=0,
            )
        except OSError as e:
            self._log.close()
            raise AgentError(f"agent {role}: cannot start {argv[0]!r}: {e.strerror}") from None
        self.pid = self.proc.pid
        self.last_stderr = ""
        self.pgid = os.getpgid(self.pid)
        failpoint.agent_groups[role] = self.pgid
        self.watchdog = Watchdog(clock, heartbeat_interval, heartbeat_misses)
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True, name=f"{role}-stdout"),
            threading.Thread(target=self._read_stderr, daemon=True, name=f"{role}-stderr"),
        ]
        for t in self._threads:
            t.start()

    # -- reading ------------------------------------------------------------

    def _put(self, **kw: Any) -> None:
        self._inbox.put(Incoming(self.role, self.generation, **kw))

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        splitter = protocol.LineSplitter()
        fd = self.proc.stdout.fileno()
        for data in protocol.read_chunks(fd):
            for item in splitter.feed(data):
                if isinstance(item, FramingError):
                    self._put(error=item, raw_size=item.size)
                    continue
                self._deliver(self._redactor.raw(item))
        tail = splitter.pending()
        if tail:
            self._put(
                error=FramingError(
                    f"partial line of {len(tail)} bytes at exit (no newline)",
                    size=len(tail),
                    prefix=tail[:80],
                ),
                raw_size=len(tail),
            )
        self._put(eof=True)

    def _deliver(self, line: bytes) -> None:
        if not line.strip():
            return
        try:
            message = protocol.parse_line(line)
            kind = protocol.validate_message(message)
        except (FramingError, SchemaError) as e:
            if isinstance(e, SchemaError):
                e = FramingError(str(e), size=len(line), prefix=line[:80])
            self._put(error=e, raw_size=len(line))
            return
        if kind == "heartbeat":
            self.watchdog.beat()
            return
        if kind == "log":
            self.write_log({"stream": "log", **message})
            return
        self._put(message=message, raw_size=len(line))

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

    def _signal_group(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)

    def close_input(self) -> None:
        """EOF on the agent's stdin: a well-behaved agent exits."""
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()

    def stop(self, grace: float = 2.0) -> int | None:
        """EOF, then SIGTERM, then SIGKILL to the group; always reaped."""
        self.close_input()
        rc = self._wait(grace)
        if rc is None:
            self._signal_group(signal.SIGTERM)
            rc = self._wait(grace)
        if rc is None:
            self._signal_group(signal.SIGKILL)
            rc = self._wait(None)
        # Stragglers the agent left in its group go too.
        self._signal_group(signal.SIGKILL)
        self._finish()
        return rc

    def kill(self) -> int | None:
        self._signal_group(signal.SIGKILL)
        rc = self._wait(None)
        self._finish()
        return rc

    def _wait(self, timeout: float | None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def _finish(self) -> None:
        if failpoint.agent_groups.get(self.role) == self.pgid:
            del failpoint.agent_groups[self.role]
        for t in self._threads:
            t.join(timeout=5)
        with self._log_lock:
            self._log.close()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError, ValueError):
                    stream.close()


def group_alive(pid: int, pgid: int) -> bool:
    """Is ``pid`` alive and still in process group ``pgid`` (not a recycled pid)?"""
    try:
        same = os.getpgid(pid) == pgid
    except (ProcessLookupError, PermissionError):
        return False
    # A zombie (dead, not yet reaped by its new parent) is not alive.
    return same and not _is_zombie(pid)


def kill_orphan(pid: int, pgid: int, *, clock: Callable[[], float] = time.monotonic) -> bool:
    """SIGKILL an orphaned agent's group and wait until its leader is gone."""
    if not group_alive(pid, pgid):
        return False
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = clock() + 10
    while clock() < deadline:
        # Reap it if it happens to be our child; otherwise watch /proc.
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        if not Path(f"/proc/{pid}").exists() or _is_zombie(pid):
            return True
        time.sleep(0.01)
    return True


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"
