"""The NDJSON transport: agents as subprocesses speaking lorch's protocol (DESIGN.md §3, §6).

Each agent runs in its own process group (``lorch/procs.py``). Its stdout is
read by the engine's own thread through the :class:`~lorch.transport.Inbox`
(one ``epoll`` over every agent), whenever lorch waits — for an answer, out a
backoff, or for an agent to exit — so a chatty agent never blocks on a full
pipe while lorch waits for it, and an answer reaches the engine without a
hand-off between threads (docs/decisions.md D17). Stderr has a reader thread
for the whole life of the process and goes to the agent's log file.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from lorch import procs, protocol
from lorch.errors import AgentError, FramingError, SchemaError
from lorch.transport import Inbox, Incoming, ItemKind, Launch, SendContext


class NdjsonTransport:
    """Starts :class:`AgentProcess` ports (lorch's own NDJSON protocol)."""

    def start(self, launch: Launch, inbox: Inbox) -> AgentProcess:
        return AgentProcess(launch, inbox)


class AgentProcess:
    """One running agent. ``generation`` tells its messages from a predecessor's."""

    sends_heartbeats = True

    def __init__(self, launch: Launch, inbox: Inbox) -> None:
        role, argv, log_path = launch.role, launch.argv, launch.log_path
        self.role = role
        self._on_stderr = launch.on_stderr
        self.argv = argv
        self.generation = launch.generation
        self._inbox = inbox
        self._redactor = launch.redactor
        self._log_path = log_path
        self._log_lock = threading.Lock()
        self._send_lock = threading.Lock()
        log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._log: IO[str] = open(log_path, "a", encoding="utf-8")  # noqa: SIM115
        os.chmod(log_path, 0o600)
        try:
            self.proc = procs.spawn(argv, cwd=launch.cwd, env=launch.env)
        except OSError as e:
            self._log.close()
            raise AgentError(f"agent {role}: cannot start {argv[0]!r}: {e.strerror}") from None
        self.pid = self.proc.pid
        self.last_stderr = ""
        self.pgid = os.getpgid(self.pid)
        self.start_time = procs.start_time(self.pid)
        assert self.proc.stdout is not None
        self.stdout_fd = self.proc.stdout.fileno()
        self.stdout_eof = False
        self._splitter = protocol.LineSplitter()
        inbox.add(self.stdout_fd, self._on_readable)
        self._threads = [
            threading.Thread(target=self._read_stderr, daemon=True, name=f"{role}-stderr"),
        ]
        for t in self._threads:
            t.start()

    # -- reading ------------------------------------------------------------

    def _on_readable(self, put: Callable[[Incoming], None]) -> bool:
        self.read_stdout(put)
        return self.stdout_eof

    def read_stdout(self, put: Callable[[Incoming], None]) -> None:
        """One read of the agent's stdout (which is readable); each item to ``put``.

        ``log`` messages go to the agent's log here; at EOF a partial last line
        is a framing error, then comes an ``exit`` item.
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
                    put(self._item("error", error=item, raw_size=item.size))
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
            put(self._item("error", error=error, raw_size=len(tail)))
        put(self._item("exit"))

    def _item(self, kind: ItemKind, **kw: Any) -> Incoming:
        return Incoming(self.role, self.generation, kind, **kw)

    def _deliver(self, line: bytes, put: Callable[[Incoming], None]) -> None:
        if not line.strip():
            return
        try:
            message = protocol.parse_line(line)
            kind = protocol.validate_message(message)
        except (FramingError, SchemaError) as e:
            if isinstance(e, SchemaError):
                e = FramingError(str(e), size=len(line), prefix=line[:80])
            put(self._item("error", error=e, raw_size=len(line)))
            return
        if kind == "heartbeat":
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

    def send(self, command: dict[str, Any], line: bytes, context: SendContext) -> bool:
        """Write the command's framed line; False if the agent's stdin is gone."""
        assert self.proc.stdin is not None
        with self._send_lock:
            try:
                self.proc.stdin.write(line)
                self.proc.stdin.flush()
            except (BrokenPipeError, OSError, ValueError):
                return False
        return True

    def cancel(self) -> None:
        """Nothing to do: an NDJSON agent is stopped or restarted instead."""

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
        self._inbox.remove(self.stdout_fd)
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
