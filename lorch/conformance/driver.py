"""Drive an agent under test: its own process group, pipes always drained,
every byte exchanged kept in a transcript (secrets redacted)."""

from __future__ import annotations

import contextlib
import queue
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorch.agents import procs
from lorch.wire import protocol
from lorch.wire.errors import FramingError, SchemaError
from lorch.wire.redact import Redactor, secret_values


@dataclass
class Line:
    """One line in the transcript: direction, time, raw bytes, decoded message."""

    n: int
    direction: str  # "in" (to the agent) | "out" (from the agent) | "err" (its stderr)
    at: float
    raw: bytes
    message: dict[str, Any] | None = None
    problem: str | None = None
    generation: int = 0


@dataclass
class Transcript:
    lines: list[Line] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    started: float = field(default_factory=time.monotonic)

    def add(self, direction: str, raw: bytes, generation: int, **kw: Any) -> Line:
        with self.lock:
            line = Line(
                len(self.lines) + 1,
                direction,
                time.monotonic() - self.started,
                raw,
                generation=generation,
                **kw,
            )
            self.lines.append(line)
            return line

    def dump(self, redactor: Redactor) -> str:
        out = []
        for line in self.lines:
            text = redactor.raw(line.raw).decode("utf-8", "replace")
            if len(text) > 2000:
                text = text[:2000] + f"… ({len(line.raw)} bytes)"
            out.append(f"{line.n:5d} {line.at:9.3f} {line.direction:<3} {text}")
        return "\n".join(out) + "\n"


class AgentUnderTest:
    def __init__(
        self, argv: list[str], workspace: Path, env: dict[str, str], transcript: Transcript
    ) -> None:
        self.argv = argv
        self.workspace = workspace
        self.env = env
        self.t = transcript
        self.redactor = Redactor(secret_values(env))
        self.inbox: queue.Queue[Line | None] = queue.Queue()
        self.generation = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.threads: list[threading.Thread] = []
        # True once this generation's stdout reached EOF (the agent closed it or exited):
        # ``next`` returning None then means "nothing more will come", not "not yet".
        self.stdout_closed = False

    # -- life -------------------------------------------------------------------

    def start(self) -> None:
        if self.proc is not None:
            self.kill()  # the previous process and its pipes, whatever its state
        self.generation += 1
        self.inbox = queue.Queue()
        self.stdout_closed = False
        self.proc = procs.spawn(self.argv, cwd=self.workspace, env=self.env, bufsize=-1)
        gen = self.generation
        assert self.proc.stdout is not None and self.proc.stderr is not None
        self.threads = [
            threading.Thread(
                target=self._read,
                args=(self.proc.stdout.fileno(), "out", gen, self.inbox),
                daemon=True,
            ),
            threading.Thread(
                target=self._read, args=(self.proc.stderr.fileno(), "err", gen, None), daemon=True
            ),
        ]
        for th in self.threads:
            th.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def _read(
        self, fd: int, direction: str, gen: int, inbox: queue.Queue[Line | None] | None
    ) -> None:
        splitter = protocol.LineSplitter()
        for data in protocol.read_chunks(fd):
            for item in splitter.feed(data):
                if isinstance(item, FramingError):
                    line = self.t.add(direction, item.prefix + b"...", gen, problem=str(item))
                else:
                    line = self._decode(direction, item, gen)
                if inbox is not None:
                    inbox.put(line)
        tail = splitter.pending()
        if tail:
            line = self.t.add(direction, tail, gen, problem="partial line without newline at exit")
            if inbox is not None:
                inbox.put(line)
        if inbox is not None:
            inbox.put(None)

    def _decode(self, direction: str, raw: bytes, gen: int) -> Line:
        if direction == "err":
            return self.t.add(direction, raw, gen)
        try:
            msg = protocol.parse_line(raw)
            protocol.validate_message(msg)
            return self.t.add(direction, raw, gen, message=msg)
        except (FramingError, SchemaError) as e:
            return self.t.add(direction, raw, gen, problem=str(e))

    def send(self, message: dict[str, Any] | bytes) -> Line:
        assert self.proc is not None and self.proc.stdin is not None
        raw = message if isinstance(message, bytes) else protocol.encode(message)
        line = self.t.add("in", raw.rstrip(b"\n"), self.generation)
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            self.proc.stdin.write(raw)
            self.proc.stdin.flush()
        return line

    def next(self, timeout: float) -> Line | None:
        """The next line from stdout (None on EOF or timeout; ``stdout_closed`` tells which)."""
        if self.stdout_closed:
            return None
        try:
            line = self.inbox.get(timeout=max(0.0, timeout))
        except queue.Empty:
            return None
        if line is None:
            self.stdout_closed = True
        return line

    def close_stdin(self) -> None:
        assert self.proc is not None
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                self.proc.stdin.close()

    def wait(self, timeout: float) -> int | None:
        assert self.proc is not None
        return procs.wait(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL the whole process group and reap."""
        if self.proc is None:
            return
        procs.kill_and_reap(self.proc)
        for th in self.threads:
            th.join(timeout=2)
        for s in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if s is not None:
                with contextlib.suppress(OSError, ValueError):
                    s.close()

    def stderr_tail(self, n: int = 5) -> str:
        errs = [ln.raw.decode("utf-8", "replace") for ln in self.t.lines if ln.direction == "err"]
        return " | ".join(self.redactor.text(e) for e in errs[-n:])
