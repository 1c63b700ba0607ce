"""The NDJSON transport: agents as subprocesses speaking lorch's protocol (DESIGN.md §3, §6).

Each agent runs in its own process group (``lorch/agents/procs.py``). Its stdout is
read by the engine's own thread through the :class:`~lorch.agents.transport.Inbox`
(one ``epoll`` over every agent), whenever lorch waits — for an answer, out a
backoff, or for an agent to exit — so a chatty agent never blocks on a full
pipe while lorch waits for it, and an answer reaches the engine without a
hand-off between threads (docs/decisions.md D17). Stderr has a reader thread
for the whole life of the process and goes to the agent's log file.

The agent's exit ends its channel: lorch watches its pidfd next to its stdout,
and when it has exited takes what its stdout pipe holds at that moment as its
last words and closes the pipe. A process it left behind that still holds the
pipe (it left the group with ``setsid``) is not heard, and is ended with it
(``procs.end_strays``).
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import json
import os
import selectors
import termios
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from lorch.agents import procs, registry
from lorch.agents.pipewriter import PipeWriter
from lorch.agents.transport import (
    AgentPort,
    Inbox,
    Incoming,
    ItemKind,
    Launch,
    SendContext,
    open_agent_log,
)
from lorch.store import failpoint
from lorch.wire import protocol
from lorch.wire.errors import AgentError, FramingError, StorageError
from lorch.wire.textsafe import visible

READ_SIZE = 65536


class NdjsonTransport:
    """Starts :class:`AgentProcess` ports (lorch's own NDJSON protocol)."""

    capabilities = registry.NDJSON

    def start(self, launch: Launch, inbox: Inbox) -> AgentProcess:
        return AgentProcess(launch, inbox)

    def check(self, port: AgentPort) -> str:
        """Its start-up check is all there is: its first heartbeat came, or none is sent."""
        if port.ready_within is None:
            return "started (it sends no heartbeats: nothing to wait for)"
        return f"ready ({port.awaits} came)"


class AgentProcess:
    """One running agent. ``generation`` tells its messages from a predecessor's.

    Its start-up check is its first heartbeat (docs/protocol.md: an agent sends
    one as soon as it starts); an agent started without heartbeats
    (``mockagent --no-heartbeat``) has none, and only command timeouts apply.
    """

    awaits = "its first heartbeat"

    def __init__(self, launch: Launch, inbox: Inbox) -> None:
        role, argv, log_path = launch.role, launch.argv, launch.log_path
        self.role = role
        self.sends_heartbeats = launch.heartbeats
        self.ready_within: float | None = launch.ready_within if launch.heartbeats else None
        self._ready = not launch.heartbeats
        self._on_stderr = launch.on_stderr
        self.argv = argv
        self.generation = launch.generation
        self._inbox = inbox
        self._redactor = launch.redactor
        self._log_path = log_path
        self._log_lock = threading.Lock()
        self._log_error: OSError | None = None  # a failed log write, raised on the next call
        self._log: IO[str] = open_agent_log(log_path)
        try:
            self.proc = procs.spawn(argv, cwd=launch.cwd, env=launch.env)
        except OSError as e:
            self._log.close()
            raise AgentError(f"agent {role}: cannot start {argv[0]!r}: {e.strerror}") from None
        assert self.proc.stdin is not None
        # The writer owns a copy of the stdin descriptor: writes never block lorch
        # (an agent that does not read is timed out like one that does not answer).
        self._stdin = PipeWriter(os.dup(self.proc.stdin.fileno()), role)
        self.proc.stdin.close()
        self.pid = self.proc.pid
        self.last_stderr = ""
        self.pgid = os.getpgid(self.pid)
        self.start_time = procs.start_time(self.pid)
        assert self.proc.stdout is not None
        self.stdout_fd = self.proc.stdout.fileno()
        os.set_blocking(self.stdout_fd, False)
        self.stdout_eof = False  # the channel has ended: EOF, or the agent exited
        self._splitter = protocol.LineSplitter(launch.line_limit)
        inbox.add(self.stdout_fd, self._on_readable)
        # Readable once the agent has exited (None where pidfds do not exist: then
        # its channel ends at EOF only).
        self._pidfd: int | None = None
        with contextlib.suppress(OSError, AttributeError):
            self._pidfd = os.pidfd_open(self.pid)
            inbox.add(self._pidfd, self._on_exit)
        self._threads = [
            threading.Thread(target=self._read_stderr, daemon=True, name=f"{role}-stderr"),
        ]
        for t in self._threads:
            t.start()

    # -- reading ------------------------------------------------------------

    def _on_readable(self, put: Callable[[Incoming], None]) -> bool:
        self.read_stdout(put)
        return self.stdout_eof

    def read_stdout(self, put: Callable[[Incoming], None], size: int = READ_SIZE) -> int:
        """One read of the agent's stdout, of ``size`` bytes at most; each item to ``put``.

        How many bytes it read: none once its channel has ended. ``log``
        messages go to the agent's log here; at EOF a partial last line is a
        framing error, then comes an ``exit`` item.
        """
        if self.stdout_eof:
            return 0
        try:
            data = os.read(self.stdout_fd, size)
        except BlockingIOError:
            return 0
        except OSError:
            data = b""
        if data:
            for item in self._splitter.feed(data):
                if isinstance(item, FramingError):
                    put(self._item("error", error=item, raw_size=item.size))
                else:
                    self._deliver(item, put)
            return len(data)
        self._end_channel(put)
        return 0

    def _on_exit(self, put: Callable[[Incoming], None]) -> bool:
        """The agent has exited (its pidfd is readable): its channel ends now.

        What its stdout pipe holds at this moment is the last it wrote; the
        pipe is then closed, so bytes a process it left behind writes later are
        never taken for its own (that process gets EPIPE).
        """
        left = _buffered(self.stdout_fd) if not self.stdout_eof else 0
        while left > 0 and (n := self.read_stdout(put, min(left, READ_SIZE))) > 0:
            left -= n
        self._end_channel(put)
        self._close_stdout()
        return True

    def _end_channel(self, put: Callable[[Incoming], None]) -> None:
        if self.stdout_eof:
            return
        self.stdout_eof = True
        tail = self._splitter.pending()
        if tail:
            error = FramingError(
                f"partial line of {len(tail)} bytes at exit (no newline)",
                size=len(tail),
                prefix=protocol.prefix_of(tail),
                window=protocol.window_of(tail),
            )
            put(self._item("error", error=error, raw_size=len(tail)))
        put(self._item("exit"))

    def _item(self, kind: ItemKind, **kw: Any) -> Incoming:
        return Incoming(self.role, self.generation, kind, **kw)

    def _deliver(self, line: bytes, put: Callable[[Incoming], None]) -> None:
        if not line.strip():
            return
        # Parsed, redacted after decoding, validated: a message or why not.
        message = protocol.read_message(line, self._redactor)
        if isinstance(message, protocol.ProtocolError):
            error = FramingError(
                message.reason,
                size=message.size,
                prefix=message.prefix[: protocol.PREFIX_LEN],
                window=message.prefix,
            )
            put(self._item("error", error=error, raw_size=len(line)))
            return
        kind = message["kind"]
        if kind == "heartbeat":
            if not self._ready:
                self._ready = True
                put(self._item("ready"))
            put(self._item("heartbeat"))
            return
        if kind == "log":
            self.write_log({"stream": "log", **message})
            return
        put(self._item("event", message=message, raw_size=len(line)))

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
            ready = _readable([self.stdout_fd, self._pidfd], left)
            if self._pidfd in ready:
                self._on_exit(lambda _item: None)  # its exit ends its channel
            elif ready:
                self.read_stdout(lambda _item: None)

    def _close_stdout(self) -> None:
        """Close lorch's end of the agent's stdout (once): nothing more is read from it."""
        stream = self.proc.stdout
        if stream is not None and not stream.closed:
            self._inbox.remove(self.stdout_fd)
            with contextlib.suppress(OSError):
                stream.close()

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
        self.last_stderr = self._redactor.cut(lines[-1], 200)
        if self._on_stderr is not None:
            for s in lines:
                # Shown on the terminal (-v): its escapes and \r are shown, not obeyed.
                self._on_stderr(f"[{self.role} stderr] {visible(self._redactor.text(s))}")
        at = protocol.now_rfc3339()
        text = "".join(
            json.dumps({"at": at, "stream": "stderr", "line": self._redactor.text(s)}) + "\n"
            for s in lines
        )
        self._append_log(text)

    def write_log(self, entry: dict[str, Any]) -> None:
        # The entry was redacted when its line was decoded; what lorch adds is not secret.
        self._append_log(json.dumps({"at": protocol.now_rfc3339(), **entry}) + "\n")

    def _append_log(self, text: str) -> None:
        """Append to the agent's log; a failing disk is kept and raised on the next call.

        (This runs on the stderr thread too, where an exception would only print
        a traceback: the engine's thread reports it, in one line.)
        """
        with self._log_lock:
            if self._log_error is not None or self._log.closed:
                return
            try:
                failpoint.io_fault(self._log_path)
                self._log.write(text)
                self._log.flush()
            except OSError as e:
                self._log_error = e

    def _raise_log_error(self) -> None:
        e = self._log_error
        if e is not None:
            self._log_error = None
            raise StorageError(f"cannot write agent log {self._log_path}: {e.strerror}") from e

    # -- writing ------------------------------------------------------------

    def send(self, command: dict[str, Any], line: bytes, context: SendContext) -> bool:
        """Queue the command's framed line (never blocks); False if the agent's stdin is gone."""
        self._raise_log_error()
        return self._stdin.write(line)

    def cancel(self) -> None:
        """Nothing to do: an NDJSON agent is stopped or restarted instead."""

    # -- stopping -----------------------------------------------------------

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close_input(self) -> None:
        """EOF on the agent's stdin: a well-behaved agent exits."""
        self._stdin.close()

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
        if self.proc.stdout is not None and not self.proc.stdout.closed:
            self._inbox.remove(self.stdout_fd)
            # The group is dead: what is left in the pipe is read (its log lines
            # kept) until the agent's exit ends the channel.
            self._drain_stdout(0.5)
        self._close_stdout()
        if self._pidfd is not None:
            self._inbox.remove(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None
        # What it left behind outside its group (setsid) holds its stderr open.
        procs.end_strays()
        for t in self._threads:
            t.join(timeout=5)
        self._stdin.close()
        if self.proc.stderr is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stderr.close()
        with self._log_lock:
            try:
                if not self._log.closed:
                    self._log.close()
            except OSError as e:  # the last flush, on a full or read-only disk
                self._log_error = self._log_error or e
        self._raise_log_error()


def _readable(fds: list[int | None], timeout: float | None) -> set[int]:
    """Which of ``fds`` (None: skipped) are readable, waiting ``timeout`` seconds at most."""
    with selectors.DefaultSelector() as sel:
        for fd in fds:
            if fd is not None:
                sel.register(fd, selectors.EVENT_READ)
        return {key.fd for key, _ in sel.select(timeout)}


def _buffered(fd: int) -> int:
    """How many bytes the pipe ``fd`` holds now (FIONREAD)."""
    n = array.array("i", [0])
    try:
        fcntl.ioctl(fd, termios.FIONREAD, n, True)
    except OSError:
        return 0
    return n[0]
