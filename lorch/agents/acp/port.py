"""The ACP agent process behind an :class:`~lorch.agents.transport.AgentPort`.

:class:`AcpTransport` starts one :class:`AcpPort` per agent: the process in its
own group, the SDK's connection over its stdio, ``initialize`` (its answer is the
``ready`` item), and stop / kill (a turn in flight is asked ``session/cancel``
first). Every message goes whole into the agent's log (redacted as decoded
values, before it is encoded); a command becomes a :class:`~lorch.agents.acp.turn.Turn`.

The SDK talks to the agent through a :class:`~lorch.agents.acp.wire.Wire` (lines
bounded by the run's line limit, every message checked). What the connection
cannot go on with — a malformed message, a line past the limit, a turn past
its ``max_updates_per_turn``, the SDK's receive loop failing — is a fault: one
``error`` item naming the role and the cause, so the attempt fails at once.
"""

from __future__ import annotations

import asyncio
import codecs
import concurrent.futures
import contextlib
import json
import os
import signal
import threading
from collections.abc import Callable
from typing import IO, Any, cast

import acp as sdk
from acp import schema as s
from acp.connection import StreamDirection, StreamEvent
from pydantic import ValidationError

from lorch import __version__
from lorch.agents import known_agents, procs, registry
from lorch.agents.acp.client import Client, lenient_session_updates
from lorch.agents.acp.events import one_line
from lorch.agents.acp.host import AcpSettings
from lorch.agents.acp.loop import PORT, Loop, install_sdk_log
from lorch.agents.acp.outbox import Outbox
from lorch.agents.acp.policy import Policy
from lorch.agents.acp.terminals import Terminals
from lorch.agents.acp.turn import AUTH_REQUIRED, Turn
from lorch.agents.acp.wire import ACP_LINE_MAX_BYTES, AcpFault, Wire
from lorch.agents.procs import signal_group
from lorch.agents.transport import AgentPort, Inbox, Incoming, Launch, SendContext, open_agent_log
from lorch.wire import protocol
from lorch.wire.errors import AgentError
from lorch.wire.protocol import Record
from lorch.wire.textsafe import visible_line

# The pipes' read buffers; a message's line limit is the Wire's (launch.line_limit).
STREAM_LIMIT = 1 << 16
# How long a fault's report waits for the notifications before it to be handled.
NOTIFICATIONS_S = 1.0
STDERR_TAIL = 500  # characters of the last stderr line kept for a failure message
# Updates whose text streams in chunks (a secret may be split across two).
_STREAMED = ("agent_message_chunk", "agent_thought_chunk", "user_message_chunk")
LOG_FLUSH_S = 0.05
# How long kill() lets an agent answer session/cancel before the group is killed.
CANCEL_GRACE_S = 0.5


class AcpTransport:
    """Starts ACP agents; ``settings`` maps a role to its :class:`AcpSettings`."""

    capabilities = registry.ACP

    def __init__(self, settings: Callable[[str], AcpSettings]) -> None:
        self.settings = settings

    def start(self, launch: Launch, inbox: Inbox) -> AcpPort:
        """Start the agent; its ``ready`` item follows once it answers ``initialize``."""
        port = AcpPort(launch, inbox, self.settings(launch.role))
        port.begin()
        return port

    def check(self, port: AgentPort) -> str:
        """What the agent answered to ``initialize``, once a session opens too."""
        if not isinstance(port, AcpPort):
            raise TypeError(f"not an ACP port: {port!r}")
        return describe_session(port)


class AcpPort:
    """One ACP agent process, driven by the engine.

    See :class:`lorch.agents.transport.AgentPort`.
    """

    sends_heartbeats = False
    awaits = "its answer to ACP initialize"

    def __init__(self, launch: Launch, inbox: Inbox, settings: AcpSettings) -> None:
        self.launch = launch
        self.inbox = inbox
        self.settings = settings
        self.role = launch.role
        self.generation = launch.generation
        self.argv = list(launch.argv)
        self.agent_id = f"{launch.role}#{launch.generation}"
        self.pid = -1
        self.pgid = -1
        self.start_time: int | None = None
        self.last_stderr = ""
        self.init: s.InitializeResponse | None = None
        # The start-up check is the answer to initialize (its own timer fires first).
        self.ready_within: float | None = settings.init_timeout_s + 5.0
        self._init_task: asyncio.Task[str] | None = None
        self._tasks: list[asyncio.Task[None]] = []  # referenced: the loop keeps only weak ones
        self._unready = ""  # why initialize failed
        self.policy = Policy(settings.workspace, settings.permissions)
        self._loop = Loop.get()
        self.out = Outbox(
            launch,
            inbox,
            self._loop.loop,
            settings.workspace,
            max_records=settings.max_updates_per_turn,
            on_limit=lambda reason: self.fault(AcpFault(reason)),
        )
        self.wire: Wire | None = None
        self.faulted: AcpFault | None = None  # why the connection cannot go on
        self.test_groups: set[int] = set()  # process groups of test commands running
        self.terminals = Terminals(settings.workspace, launch.env, launch.wrap)
        self._proc: asyncio.subprocess.Process | None = None
        self.conn: Any = None
        self._turn: concurrent.futures.Future[None] | None = None
        self.session: str | None = None  # the session of the turn in flight
        self._exited = threading.Event()
        self._held: tuple[str, str] = ("", "")  # streamed text held back from the log
        self._exit_posted = False
        self._flush_due = False
        self._log: IO[str] = open_agent_log(launch.log_path)

    # -- start ---------------------------------------------------------------------

    def begin(self) -> None:
        """Start the agent and ask ``initialize``, without waiting for the answer.

        A ``ready`` item follows once it answers, or an ``exit`` item whose
        ``reason`` says why not (the agent is killed): the engine starts every
        role this way at once and waits for them together (``await_ready``).
        Raises :class:`AgentError` only when the process cannot be started.
        """
        install_sdk_log()
        try:
            self._loop.run(self._spawn(self.settings.init_timeout_s), 30.0)
        except AgentError:
            self.kill()  # releases its log
            raise

    def start(self) -> None:
        """Start the agent and wait for its ``initialize`` answer; AgentError if none."""
        self.begin()
        timeout = self.settings.init_timeout_s
        try:
            reason = self._loop.run(self._init_outcome(), timeout + 5.0)
        except (concurrent.futures.TimeoutError, TimeoutError):
            reason = f"no answer to ACP initialize in {timeout:g} s" + self._stderr_hint()
        if reason:
            self.kill()
            raise AgentError(f"agent {self.role} ({visible_line(self.argv[0])}): {reason}")

    def _stderr_hint(self) -> str:
        return f"; its stderr said: {self.last_stderr}" if self.last_stderr else ""

    async def _spawn(self, timeout: float) -> None:
        token = PORT.set(self)  # the connection's tasks inherit it
        try:
            try:
                proc = await procs.spawn_async(
                    self.argv,  # the leader of its own process group: killed as one
                    cwd=str(self.launch.cwd),
                    env=dict(self.launch.env),
                    limit=STREAM_LIMIT,
                )
            except OSError as e:
                raise AgentError(f"agent {self.role}: cannot start {self.argv[0]}: {e}") from None
            self._proc = proc
            self.pid = self.pgid = proc.pid
            self.start_time = _start_time(proc.pid)
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._drain_stderr(proc))]
            client = cast(sdk.Client, Client(self))  # elicitation: not offered
            assert proc.stdin is not None and proc.stdout is not None
            self.wire = Wire(self.role, proc.stdout, proc.stdin, ACP_LINE_MAX_BYTES, self.fault)
            conn = sdk.connect_to_agent(client, self.wire, observers=[self._observe])
            lenient_session_updates(conn, self)
            receiving = getattr(conn._conn, "_recv_task", None)
            if isinstance(receiving, asyncio.Future):
                receiving.add_done_callback(self._receiving_ended)
            self.conn = conn
            self._init_task = loop.create_task(self._initialize(proc, conn, timeout))
            self._tasks.append(loop.create_task(self._watch_exit(proc)))
        finally:
            PORT.reset(token)

    async def _init_outcome(self) -> str:
        """Why ``initialize`` failed ("" once answered), when it is over."""
        assert self._init_task is not None
        return await asyncio.shield(self._init_task)

    async def _initialize(self, proc: asyncio.subprocess.Process, conn: Any, timeout: float) -> str:
        """Ask ``initialize``; post ``ready``, or kill the agent and return why not."""
        reason = ""
        try:
            self.init = await asyncio.wait_for(
                conn.initialize(
                    protocol_version=sdk.PROTOCOL_VERSION,
                    client_capabilities=s.ClientCapabilities(
                        fs=s.FileSystemCapabilities(
                            read_text_file=self.settings.fs, write_text_file=self.settings.fs
                        ),
                        terminal=True,
                    ),
                    client_info=s.Implementation(name="lorch", version=__version__),
                ),
                timeout,
            )
        except TimeoutError:
            reason = f"no answer to ACP initialize in {timeout:g} s" + self._stderr_hint()
        except sdk.RequestError as e:
            reason = f"ACP initialize failed: {self._shown(str(e))} (code {e.code})"
        except (ConnectionError, ValidationError) as e:
            if self.faulted is not None:
                reason = self._shown(str(self.faulted))
            else:
                await asyncio.sleep(0)  # let the stderr reader catch up
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(proc.wait(), 1.0)
                what = (
                    f"exited (code {proc.returncode})"
                    if proc.returncode is not None
                    else "answered initialize with a bad message: "
                    + self._shown(one_line(e, self.launch.redactor))
                )
                reason = f"{what} before ACP initialize completed" + self._stderr_hint()
        except Exception as e:  # an SDK fault must not leave the start-up hanging
            reason = f"ACP initialize failed: {self._shown(one_line(e, self.launch.redactor))}"
        if reason:
            self._unready = reason
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        else:
            self.inbox.post(Incoming(self.role, self.generation, "ready"))
        return reason

    # -- the engine's side -------------------------------------------------------

    def _shown(self, text: str) -> str:
        """Agent text for a one-line reason: redacted, control characters visible."""
        return visible_line(self.launch.redactor.text(text))

    def fault(self, error: AcpFault) -> None:
        """The connection cannot go on: say why once, and end it.

        During ``initialize`` its answer's failure says it; otherwise an
        ``error`` item (a protocol error: with a turn in flight, the attempt
        fails at once) and the agent is killed.
        """
        if self.faulted is not None:
            return
        self.faulted = error
        self.log({"stream": "acp", "fault": str(error)})
        if self.wire is not None:
            self.wire.stop(error)  # the SDK sees the end: what it has in flight fails
        if self._init_task is None or not self._init_task.done():
            return
        self._tasks.append(self._loop.loop.create_task(self._report(error)))

    async def _report(self, error: AcpFault) -> None:
        # What the agent said before the fault is handled first (the SDK handles each
        # notification in a task of its own), so the ledger keeps the order.
        conn = self.conn
        tasks = getattr(getattr(getattr(conn, "_conn", None), "_tasks", None), "_tasks", ())
        said = [t for t in tasks if t.get_name() == "acp.Connection.notification"]
        if said:
            await asyncio.wait(said, timeout=NOTIFICATIONS_S)
        self.out.flush_text()
        self.out.post_held()
        self.inbox.post(
            Incoming(self.role, self.generation, "error", error=error, raw_size=error.size)
        )
        # Its connection is over: the agent goes (its exit item follows the error).
        self._signal(signal.SIGKILL)

    def _receiving_ended(self, task: asyncio.Future[Any]) -> None:
        """The SDK's receive loop ended: a failure of its own is a fault too."""
        if task.cancelled() or self.faulted is not None:
            return
        exc = task.exception()
        if exc is not None:
            reason = f"agent {self.role}: the ACP connection failed: " + self._shown(
                one_line(exc, self.launch.redactor)
            )
            self.fault(AcpFault(reason))

    def send(self, command: dict[str, Any], line: bytes, context: SendContext) -> bool:
        if not self.alive() or self.faulted is not None:
            return False
        self.out.command = command
        self._turn = self._loop.spawn(Turn(self, command, context).run())
        return True

    def cancel(self) -> None:
        if self.alive() and self.session is not None and self.conn is not None:
            with contextlib.suppress(Exception):
                self._loop.run(self.conn.cancel(session_id=self.session), CANCEL_GRACE_S)

    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    def close_input(self) -> None:
        proc = self._proc
        if proc is not None and proc.stdin is not None:
            self._loop.loop.call_soon_threadsafe(_close_quietly, proc.stdin)

    def stop(self, grace: float = 2.0) -> int | None:
        self.close_input()
        rc = self._wait(grace)
        if rc is None:
            self._signal(signal.SIGTERM)
            rc = self._wait(grace)
        if rc is None:
            return self.kill()
        self._release()
        return rc

    def kill(self) -> int | None:
        # A turn in flight is asked to stop first (session/cancel), then the group goes.
        if self.alive() and self._turn is not None and not self._turn.done():
            self.cancel()
            with contextlib.suppress(Exception):
                self._turn.result(CANCEL_GRACE_S)
        self.kill_tests()
        self._signal(signal.SIGKILL)
        rc = self._wait(5.0)
        self._release()
        return rc

    def _signal(self, sig: int) -> None:
        if self.pgid > 0:
            signal_group(self.pgid, sig)

    def kill_tests(self) -> None:
        """End the process group of every test command still running (an abandoned turn's)."""
        for pgid in list(self.test_groups):
            signal_group(pgid, signal.SIGKILL)

    def _wait(self, timeout: float) -> int | None:
        if self._proc is None:
            return None
        self._exited.wait(timeout)
        return self._proc.returncode

    def _release(self) -> None:
        self.kill_tests()
        self.terminals.close()
        if self.conn is not None:
            conn, self.conn = self.conn, None
            with contextlib.suppress(Exception):
                self._loop.run(conn.close(), 2.0)
        with contextlib.suppress(Exception):
            self._loop.run(self._close_log(), 2.0)
        if self._proc is not None and self.faulted is not None:
            # After a fault nothing reads its stdout any more, so the pipe never
            # reaches the end that would close it: close the process's pipes here.
            self._loop.loop.call_soon_threadsafe(_close_pipes, self._proc)

    async def _close_log(self) -> None:
        self._log.close()

    # -- the agent's log -------------------------------------------------------------

    def log(self, entry: Record) -> None:
        if self._log.closed:
            return
        # Redacted as decoded values: encoding escapes a secret's quotes and backslashes.
        entry = self.launch.redactor.value(entry)
        line = json.dumps({"at": protocol.now_rfc3339(), **entry}, ensure_ascii=False)
        self._log.write(line + "\n")
        # Flushed soon rather than per line: one write for a burst of messages.
        if not self._flush_due:
            self._flush_due = True
            self._loop.loop.call_later(LOG_FLUSH_S, self.flush_log)

    def flush_log(self) -> None:
        self._flush_due = False
        if not self._log.closed:
            self._log.flush()

    def _observe(self, event: StreamEvent) -> None:
        direction = "in" if event.direction == StreamDirection.INCOMING else "out"
        message = event.message  # the SDK's copy, ours to change
        if direction == "in":
            self._hold_back(message)
        self.log({"stream": "acp", "dir": direction, "message": message})
        if direction == "in" and message.get("method") == "session/update":
            self.out.beat()

    def _hold_back(self, message: Record) -> None:
        """Streamed text goes into the log as it comes, but a secret split across two
        chunks is redacted whole: a chunk's trailing piece that may begin a secret is
        held back and logged with the next chunk (or on its own, when the text ends)."""
        params = message.get("params")
        update = params.get("update") if isinstance(params, dict) else None
        kind = update.get("sessionUpdate") if isinstance(update, dict) else None
        content = update.get("content") if isinstance(update, dict) else None
        text = content.get("text") if isinstance(content, dict) else None
        streamed = message.get("method") == "session/update" and kind in _STREAMED
        if not streamed or not isinstance(text, str):
            self.release_held()
            return
        assert isinstance(content, dict)
        held_kind, held = self._held
        if held_kind != kind:
            self.release_held()
            held = ""
        red = self.launch.redactor.text(held + text)
        keep = self.launch.redactor.secret_start(red)
        content["text"] = red[: len(red) - keep]
        self._held = (str(kind), red[len(red) - keep :]) if keep else ("", "")

    def release_held(self) -> None:
        """Log the streamed text held back, if any: the text it might have continued ended."""
        kind, held = self._held
        if held:
            self._held = ("", "")
            self.log(
                {"stream": "acp", "dir": "in", "held_back": {"sessionUpdate": kind, "text": held}}
            )

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        """Every stderr line into the log; a line longer than ``STREAM_LIMIT`` goes in
        pieces, and a piece's end that may begin a secret waits for the next piece."""
        assert proc.stderr is not None
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        text = held = ""
        while chunk := await proc.stderr.read(STREAM_LIMIT):
            text += decoder.decode(chunk)
            *lines, text = text.split("\n")
            for line in lines:
                held = self._stderr_line(held + line, whole=True)
            if len(text) >= STREAM_LIMIT:
                held, text = self._stderr_line(held + text, whole=False), ""
        rest = held + text + decoder.decode(b"", final=True)
        if rest:
            self._stderr_line(rest, whole=True)

    def _stderr_line(self, text: str, *, whole: bool) -> str:
        """Log and show a stderr line (or a piece of one: ``whole`` False); returns the
        piece's end held back because it may begin a secret."""
        red = self.launch.redactor.text(text)
        keep = 0 if whole else self.launch.redactor.secret_start(red)
        red, held = red[: len(red) - keep], red[len(red) - keep :]
        # Redacted before it is cut; shown with its control characters visible.
        self.last_stderr = visible_line(self.launch.redactor.tail(red, STDERR_TAIL))
        self.log({"stream": "stderr", "line": red})
        if self.launch.on_stderr is not None:
            self.launch.on_stderr(f"[{self.role} stderr] {self.last_stderr}")
        return held

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        if self._init_task is not None and not self._init_task.done():
            # Exited during initialize: its exit item carries why (said at once).
            await asyncio.wait({self._init_task}, timeout=5.0)
        self.out.post_held()  # what it said before it went, then the exit
        self._exited.set()
        self.terminals.kill_all()
        if not self._exit_posted:
            self._exit_posted = True
            self.inbox.post(Incoming(self.role, self.generation, "exit", reason=self._unready))

    # -- what a turn asks of the port --------------------------------------------------

    def auth_message(self, what: str, error: sdk.RequestError | None = None) -> str:
        """One line: who needs authentication, the agent's own reason, what to set."""
        methods = []
        for m in (self.init.auth_methods if self.init else None) or []:
            text = m.name + (f" ({m.description})" if getattr(m, "description", None) else "")
            names = [v.name for v in getattr(m, "vars", None) or []]
            if names:
                text += f": set {', '.join(names)}"
            methods.append(text)
        advertised = "; ".join(methods) if methods else "none advertised"
        agent = known_agents.known(self.argv)
        said = ""
        if error is not None:
            reason = str(error)
            details = error.data.get("details") if isinstance(error.data, dict) else None
            if isinstance(details, str) and details:
                reason += f" ({details})"
            said = f': it said "{self._shown(reason)[:300]}"'
        if agent is not None:
            hint = known_agents.key_hint(agent, self.role, self.launch.env, os.environ)
        else:
            hint = f"a variable it needs must be listed in $.agents.{self.role}.pass_env or env"
        return (
            f"agent {self.role} ({(known_agents.command_of(self.argv) or self.argv)[0]}) "
            f"needs authentication for {what}{said}; "
            f"{hint}; auth methods: {self._shown(advertised)[:500]}"
        )

    def in_turn(self, session_id: str, request: str) -> bool:
        """Is ``session_id`` the session of the turn in flight? A request outside
        it has no command to be recorded for: it is refused, and logged."""
        if self.out.command is not None and session_id == self.session:
            return True
        self.log({"stream": "acp", "refused": f"{request} outside the turn in flight"})
        return False


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _close_pipes(proc: asyncio.subprocess.Process) -> None:
    transport = getattr(proc, "_transport", None)
    if transport is not None:
        with contextlib.suppress(Exception):
            transport.close()


def _close_quietly(stream: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        stream.close()


def describe_init(init: s.InitializeResponse) -> str:
    """The ``initialize`` answer in one line: agent, version, loadSession, auth methods."""
    info = init.agent_info
    who = f"{info.name} {info.version}" if info is not None else "agent (no agentInfo)"
    caps = init.agent_capabilities
    load = "yes" if caps is not None and caps.load_session else "no"
    methods = [m.id + (f" ({m.name})" if m.name != m.id else "") for m in init.auth_methods or []]
    line = f"{who}, ACP protocol {init.protocol_version}, loadSession: {load}, auth methods: " + (
        ", ".join(methods) if methods else "none"
    )
    return visible_line(line)  # the agent's own words: shown, never interpreted


def describe_session(port: AcpPort) -> str:
    """What a started agent answered to ``initialize``, once a session opens too.

    Raises :class:`AgentError` with the exact failure (no session: it needs
    authentication, or ``session/new`` failed or got no answer).
    """
    assert port.init is not None and port.conn is not None
    text = describe_init(port.init)
    try:
        port._loop.run(
            port.conn.new_session(cwd=str(port.settings.workspace), mcp_servers=[]),
            port.settings.init_timeout_s,
        )
    except sdk.RequestError as e:
        if e.code == AUTH_REQUIRED:
            raise AgentError(f"{text}; but {port.auth_message('a session', e)}") from None
        raise AgentError(f"{text}; but session/new failed: {e} (code {e.code})") from None
    except (concurrent.futures.TimeoutError, TimeoutError):
        raise AgentError(f"{text}; but no answer to session/new") from None
    return text
