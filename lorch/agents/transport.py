"""The agent interface: what the engine needs from an agent, whatever it speaks.

The engine (``lorch/engine/loop.py``) talks to every agent through an
:class:`AgentPort`, started by a :class:`Transport`, and hears from all of them
through one :class:`Inbox`. The NDJSON transport (``lorch/agents/ndjson.py``,
today's protocol over a subprocess's stdin/stdout) is one implementation; a
transport over the Agent Client Protocol is another. Adding a transport means
implementing these two protocols; the engine and the workflow reducer do not
change.

How one command travels (see ``docs/architecture.md``): the engine appends the
command to the ledger and fsyncs it, then calls :meth:`AgentPort.send`; the
transport delivers it and, as the agent answers, puts :class:`Incoming` items
into the inbox; the engine takes them out with :meth:`Inbox.get` (a deadline in
seconds), records them, folds them into the workflow state, and acts.
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, Protocol

from lorch.store.atomic import ensure_dir, open_append
from lorch.wire.errors import FramingError, SchemaError
from lorch.wire.protocol import Record
from lorch.wire.redact import Redactor
from lorch.wire.vocabulary import MAX_LINE

ItemKind = Literal["event", "heartbeat", "ready", "error", "exit", "permission"]


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What sets one transport apart, for the layers above it to ask instead of its name.

    The registry (:mod:`lorch.agents.registry`) holds one per transport, by the
    name ``$.agents.ROLE.transport`` gives; each transport class carries its own.

    - ``name``: the transport's name in ``lorch.json``.
    - ``heartbeats``: its agents send heartbeats, and the watchdog's timeouts
      (``heartbeat_interval_s``, the start-up grace) apply to them.
    - ``checkpointed_turns``: its agents see no idempotency key, so lorch makes
      their effects exactly-once: the workspace is checkpointed around every
      command whatever the role's ``idempotency`` (which defaults to
      ``"lorch"``), the transport ends each turn with a :class:`TurnCheckpoint`
      and may post ``permission`` items.
    - ``runs_tests``: after a builder's turn the transport runs the task's
      ``test_cmd`` itself (it builds the terminal event).
    - ``start_timeout_s``: how long an agent may take to pass its start-up
      check unless the role says (``timeouts_s.start``); None: the watchdog's
      start-up grace (heartbeat interval times the misses allowed).
    - ``check``: the word ``lorch doctor`` names its start-up line with.
    - ``options``: the role fields (``$.agents.ROLE.*``) only this transport reads.
    """

    name: str
    heartbeats: bool
    checkpointed_turns: bool
    runs_tests: bool
    start_timeout_s: float | None
    check: str
    options: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TurnCheckpoint:
    """The workspace checkpoint a transport took when a turn ended
    (:attr:`Capabilities.checkpointed_turns`; ACP).

    ``tree`` is the git tree id, ``changed`` every path changed since the
    command's pre-command checkpoint, sorted. The engine records it as the
    command's post checkpoint instead of taking the same one again.
    """

    tree: str
    changed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Incoming:
    """One thing an agent said, as the engine sees it.

    ``kind``:

    - ``"event"``: a schema-valid message other than a heartbeat or log
      (``message`` holds it, already redacted; ``raw_size`` its size in bytes);
    - ``"heartbeat"``: the agent is alive (the engine's watchdog is fed with it);
    - ``"ready"``: the agent passed its transport's start-up check and can take
      commands (NDJSON: its first heartbeat, which follows as a ``heartbeat``;
      ACP: its answer to ``initialize``); at most one per generation;
    - ``"error"``: bytes that are not a valid message (``error`` says why and
      carries the offending prefix; ``raw_size`` how many bytes there were);
    - ``"exit"``: the agent's output ended (it exited or closed its stdout).
      Nothing more comes from this generation. ``reason``, when set, is why the
      transport gave up on it (an ACP ``initialize`` that failed).
    - ``"permission"``: a decision lorch's transport made for the agent's
      command in flight (ACP: a ``session/request_permission`` or a
      ``terminal/create`` answered by the role's policy). ``message`` is
      ``{"event": "system.permission", "payload": ...}``, the record the engine
      writes: built by lorch from what the agent asked, never bytes the agent
      sent as a message.

    ``checkpoint``: on the terminal event of a transport that checkpoints the
    workspace itself when a turn ends (ACP), that checkpoint.

    ``role`` is the role the channel belongs to — never what a message claims —
    and ``generation`` the port's, so the engine can drop a predecessor's last
    words after a restart.
    """

    role: str
    generation: int
    kind: ItemKind
    message: Record | None = None
    error: FramingError | SchemaError | None = None
    raw_size: int = 0
    reason: str = ""
    checkpoint: TurnCheckpoint | None = None

    @property
    def eof(self) -> bool:
        return self.kind == "exit"


@dataclass(frozen=True, slots=True)
class SendContext:
    """What the engine knows about a command beyond its bytes.

    ``checkpoint``: the id of the workspace checkpoint (a git tree) lorch
    recorded write-ahead before this command, or None when none was taken. A
    transport that builds the terminal event itself (ACP) lists the files
    changed since it as the command's artifacts.
    """

    checkpoint: str | None = None


def unsandboxed(argv: list[str], cwd: Path | None = None) -> list[str]:
    """How a role without a sandbox runs a command: as it is."""
    return list(argv)


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything a transport needs to start one agent for one role."""

    role: str
    argv: list[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path  # the agent's log (stderr and its ``log`` messages), redacted
    generation: int
    redactor: Redactor
    on_stderr: Callable[[str], None] | None = None
    # The longest line the agent may send (``policy.message_max_bytes``): a longer
    # one is a protocol error (NDJSON; ACP frames its own messages).
    line_limit: int = MAX_LINE
    # How long the agent may take, once started, to pass its start-up check
    # (``AgentPort.ready_within``), and whether it sends heartbeats at all.
    ready_within: float = 10.0
    heartbeats: bool = True
    # How a command started for this role runs in its sandbox (lorch/agents/sandbox.py):
    # ``argv`` is already wrapped; an ACP agent's terminals and the task's test
    # command go through it too (in a working directory, when given).
    wrap: Callable[[list[str], Path | None], list[str]] = unsandboxed


class AgentPort(Protocol):
    """One running agent, as the engine drives it.

    Identity (set once started, read by the engine and recorded in the ledger):

    - ``role``, ``generation``: as in :class:`Launch`; every :class:`Incoming`
      the port produces carries them.
    - ``pid``, ``pgid``: the agent's process and process group. lorch records
      them in ``system.agent_started``; a resumed run ends that group before
      it starts new agents (DESIGN.md §5.6). ``start_time`` (clock ticks since
      boot, None if unknown) tells the recorded process from a recycled pid.
    - ``argv``: the command line it was started with (recorded redacted).
    - ``sends_heartbeats``: False when the protocol has none (ACP), or the
      agent was started without them: the engine then watches only the
      command's timeout.
    - ``last_stderr``: the last stderr line, for the failure message at exit.

    Start-up check (the preflight, :func:`await_ready`):

    - ``ready_within``: seconds the agent may take, once started, to post its
      ``ready`` item; None when there is nothing to wait for (it can take
      commands once started). The engine sends nothing to an agent before it
      is ready, and a run sends nothing to any agent before all are ready.
    - ``awaits``: what the check waits for, in words ("its first heartbeat"),
      for the line that says it did not come.

    Behaviour:

    - ``send(command, line, context)`` delivers one command. ``command`` is the
      validated record, ``line`` its canonical NDJSON encoding (the very bytes
      the ledger holds), ``context`` a :class:`SendContext`. It is called only
      after the command is durable in the ledger. It returns False when the
      agent can no longer take input (it is gone); it never raises for the
      agent's faults. It must not block for longer than the agent takes to
      accept the bytes.
    - Answers arrive as :class:`Incoming` items in the :class:`Inbox` the port
      was started with: from the engine's own thread through a readable file
      descriptor (:meth:`Inbox.add`, cheapest: no thread hand-off), or from
      any thread through :meth:`Inbox.post`. Heartbeats become ``heartbeat``
      items; ``log`` messages and stderr go to the agent's log file (redacted)
      and are not items. Exactly one ``exit`` item ends a generation.
    - ``cancel()`` asks the agent to abandon the command in flight (ACP:
      ``session/cancel``); it may be a no-op (NDJSON: the agent is killed or
      restarted instead). The engine still waits for the terminal answer or
      stops the agent.
    - ``alive()``: is the agent still running?
    - ``close_input()``: EOF on the agent's input, so it winds down; called for
      every agent at once before ``stop`` so they end in parallel.
    - ``stop(grace)``: end the agent politely (EOF, then SIGTERM, then
      SIGKILL after ``grace`` seconds each), reap it, release its resources;
      returns its exit code. ``kill()``: the same at once (SIGKILL to the
      group). Both remove the port's sources from the inbox, and both may be
      called on an agent that already exited.
    """

    role: str
    generation: int
    pid: int
    pgid: int
    start_time: int | None
    argv: list[str]
    sends_heartbeats: bool
    last_stderr: str
    ready_within: float | None
    awaits: str

    def send(self, command: Record, line: bytes, context: SendContext) -> bool: ...

    def cancel(self) -> None: ...

    def alive(self) -> bool: ...

    def close_input(self) -> None: ...

    def stop(self, grace: float = 2.0) -> int | None: ...

    def kill(self) -> int | None: ...


class Transport(Protocol):
    """Starts agents of one kind (NDJSON, ACP, ...); ``capabilities`` says what sets it apart."""

    capabilities: Capabilities

    def start(self, launch: Launch, inbox: Inbox) -> AgentPort:
        """Start the agent ``launch`` describes; raise ``AgentError`` if it cannot start."""
        ...

    def check(self, port: AgentPort) -> str:
        """``lorch doctor``'s check of a ``port`` that passed its start-up check:
        what it found, in one line; ``AgentError`` (one line) when it fails."""
        ...


class Agents(Protocol):
    """The configured agents: which roles there are, and how to start one."""

    def roles(self) -> list[str]: ...

    def check(self, role: str) -> None:
        """What can be checked of ``role``'s agent without starting it (its
        command resolves; a mockagent's fixture loads); ConfigError naming it."""
        ...

    def checkpointed(self, role: str) -> bool:
        """True when lorch, not the agent, makes ``role``'s effects exactly-once:
        the engine checkpoints the workspace around each of its commands."""
        ...

    def start(
        self, role: str, generation: int, run_id: str, snapshot_id: str | None, inbox: Inbox
    ) -> AgentPort:
        """Start ``role``'s agent; AgentError if it cannot start, ConfigError if unknown."""
        ...


Reader = Callable[[Callable[[Incoming], None]], bool]


@dataclass(frozen=True, slots=True)
class Unready:
    """An agent that failed its start-up check, already stopped and reaped."""

    role: str
    reason: str  # one line: what went wrong, with its exit code and last stderr line
    returncode: int | None


def await_ready(
    inbox: Inbox, ports: list[AgentPort], clock: Callable[[], float] = time.monotonic
) -> tuple[list[Unready], list[Incoming]]:
    """Wait for every port's ``ready`` item at once, each within its ``ready_within``.

    The ports started together, so their start-ups overlap: the wait is as
    long as the slowest, not the sum. A port fails its check when its agent
    exits, or prints a line that is not a protocol message, before it is
    ready, or when its time is up; a failed port is killed and reaped here.
    Returns the failures (in the order of ``ports``) and every other item read
    meanwhile, in order, for the caller to act on (:meth:`Inbox.requeue`).
    """
    t0 = clock()
    waiting = {p.role: p for p in ports if p.ready_within is not None}
    due = {role: t0 + (p.ready_within or 0.0) for role, p in waiting.items()}
    why: dict[str, str | None] = {}
    kept: list[Incoming] = []
    while waiting:
        now = clock()
        for role in [r for r in waiting if due[r] <= now]:
            p = waiting.pop(role)
            why[role] = f"{p.awaits} did not come within {p.ready_within:g} s"
        if not waiting:
            break
        item = inbox.get(max(min(due[r] for r in waiting) - now, 0.0))
        if item is None:
            continue
        port = waiting.get(item.role)
        if port is None or port.generation != item.generation:
            kept.append(item)
        elif item.kind == "ready":
            del waiting[item.role]
        elif item.kind == "exit":
            del waiting[item.role]
            why[item.role] = item.reason or None  # said once its exit code is known
        elif item.kind == "error":
            del waiting[item.role]
            why[item.role] = f"printed a line that is not a protocol message: {item.error}"
        else:
            kept.append(item)
    failed = []
    for port in ports:
        if port.role in why:
            rc = port.kill()
            reason = why[port.role] or f"exited (code {rc}) before {port.awaits}"
            if port.last_stderr and port.last_stderr not in reason:
                reason += f"; its stderr said: {port.last_stderr}"
            failed.append(Unready(port.role, reason, rc))
    return failed, kept


class Inbox:
    """Every running agent's output, read by the thread that waits on it.

    Sources are file descriptors (``add``): when one is readable, its reader
    is called on the waiting thread and puts what it read into the inbox;
    it returns True once its source is done (EOF), which removes it. Items can
    also be posted from any thread (``post``): a wake-up pipe in the same
    ``epoll`` ends the wait at once. ``get`` returns the next item, waiting at
    most ``timeout`` seconds; ``wait`` reads for the whole time, buffering what
    comes, so that a sleeping engine still drains its agents.
    """

    def __init__(self) -> None:
        self._selector = selectors.DefaultSelector()
        self._items: collections.deque[Incoming] = collections.deque()
        self._posted: collections.deque[Incoming] = collections.deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()

    def add(self, fd: int, reader: Reader) -> None:
        self._selector.register(fd, selectors.EVENT_READ, reader)

    def remove(self, fd: int) -> None:
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(fd)

    def requeue(self, items: list[Incoming]) -> None:
        """Put items back, first, in order (read by :func:`await_ready` for the engine)."""
        self._items.extendleft(reversed(items))

    def post(self, item: Incoming) -> None:
        """Add an item from any thread; a waiting ``get`` returns it at once."""
        self.post_many((item,))

    def post_many(self, items: Iterable[Incoming]) -> None:
        """Add items in order, waking the waiting thread once (each wake-up is a
        thread switch, which costs more than the item)."""
        with self._lock:
            self._posted.extend(items)
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def get(self, timeout: float) -> Incoming | None:
        """The next item, or None when ``timeout`` seconds pass without one."""
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
        """Read agents' output for ``seconds`` (or until ``stop`` is set)."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0 and not (stop and stop.is_set()):
            self._read(min(left, 0.5))

    def wait_readable(self, fd: int) -> None:
        """Read agents' output until ``fd`` is readable (a person typing an answer).

        A prompt may wait for hours: the agents started so far must not block
        on a full pipe meanwhile. Of their heartbeats one per agent is kept
        (it says the agent has started; no command is in flight, so no
        watchdog counts the others), which keeps memory flat however long the
        wait; everything else stays in the inbox for the engine.
        """
        ready = threading.Event()

        def readable(_put: Callable[[Incoming], None]) -> bool:
            ready.set()
            return False

        try:
            self._selector.register(fd, selectors.EVENT_READ, readable)
        except (OSError, ValueError, KeyError):
            return  # a regular file or /dev/null (always readable), or a closed fd
        beating = {(i.role, i.generation) for i in self._items if i.kind == "heartbeat"}
        try:
            while not ready.is_set():
                kept = len(self._items)
                self._read(0.5)
                fresh = [self._items.pop() for _ in range(len(self._items) - kept)]
                for item in reversed(fresh):
                    if item.kind == "heartbeat":
                        if (item.role, item.generation) in beating:
                            continue
                        beating.add((item.role, item.generation))
                    self._items.append(item)
        finally:
            self.remove(fd)

    def _read(self, timeout: float) -> None:
        for key, _ in self._selector.select(max(timeout, 0.0)):
            reader: Reader | None = key.data
            if reader is None:
                self._take_posted()
            elif reader(self._items.append):
                self.remove(key.fd)

    def _take_posted(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            while os.read(self._wake_r, 4096):
                pass
        with self._lock:
            self._items.extend(self._posted)
            self._posted.clear()

    def close(self) -> None:
        self._selector.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)


def open_agent_log(path: Path) -> IO[str]:
    """An agent's log, appended to, for every transport: 0600 in a 0700 folder.

    Never through a symlink an agent planted, the mode set on the descriptor
    whatever the umask (docs/decisions.md D42).
    """
    ensure_dir(path.parent)
    return open_append(path)
