"""The ACP transport: coding agents that speak the Agent Client Protocol.

Claude Code (through ``claude-agent-acp``), Codex, Gemini CLI, goose, ... speak
ACP (JSON-RPC 2.0 over stdio). lorch is the client, built on the
``agent-client-protocol`` SDK, behind the same :class:`~lorch.transport.AgentPort`
the NDJSON transport implements: the engine, the reducer, the ledger and the
crash harness do not know which one a role uses.

One agent process per port; one ACP session per command attempt, ``cwd`` = the
workspace. lorch writes the prompt (:mod:`lorch.prompts`), answers permission
requests by the role's policy (:mod:`lorch.acp_policy`), serves ``fs/*`` and
``terminal/*`` inside the workspace, and when the turn ends builds the terminal
event itself (:mod:`lorch.acp_turn`). What the agent says on the way
(``session/update``) becomes ``log`` events — coalesced message text, tool
calls with kind/title/status, plans, permission decisions — which the engine
records and shows; every message goes whole into the agent's log.

The SDK is asyncio: every ACP port runs on one event loop in a thread of its
own (:class:`_Loop`), and hands what the engine must see to the engine's inbox
with :meth:`~lorch.transport.Inbox.post`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import json
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar, cast

import acp as sdk
from acp import schema as s
from acp.connection import StreamDirection, StreamEvent
from pydantic import ValidationError

from lorch import __version__, prompts, protocol
from lorch.acp_policy import Policy, agent_path
from lorch.acp_turn import (
    NO_TESTS,
    VerdictError,
    artifacts,
    builder_completed,
    error_event,
    log_event,
    read_verdict,
    verdict_event,
)
from lorch.errors import AgentError, PathEscape
from lorch.protocol import Record
from lorch.transport import Inbox, Incoming, Launch, SendContext, TurnCheckpoint

T = TypeVar("T")

AUTH_REQUIRED = -32000
INIT_TIMEOUT_S = 60.0
# A JSON-RPC message may be large (a file's content); lines beyond this are an error.
LINE_LIMIT = 64 * 1024 * 1024
TEXT_LIMIT = 4000  # characters of agent text per string of a ledger record
LIST_LIMIT = 100  # items of a list (paths, artifacts are lorch's own and few)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\x9b]")
HEARTBEAT_EVERY_S = 0.5
LOG_FLUSH_S = 0.05
POST_EVERY_S = 0.02
TERMINAL_OUTPUT_LIMIT = 1 << 20
# How long kill() lets an agent answer session/cancel before the group is killed.
CANCEL_GRACE_S = 0.5
FINISHED = ("end_turn", "max_tokens", "max_turn_requests")


# -- the event loop all ACP ports share ---------------------------------------------


class _Loop:
    _instance: _Loop | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="acp")
        self.thread.start()

    @classmethod
    def get(cls) -> _Loop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = _Loop()
            return cls._instance

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


# The SDK reports trouble through the root logger; records go to the log of the
# port whose connection they come from (its tasks inherit this variable).
_PORT: contextvars.ContextVar[AcpPort | None] = contextvars.ContextVar(
    "lorch_acp_port", default=None
)


class _SdkLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        port = _PORT.get()
        if port is None:
            if record.levelno >= logging.WARNING:
                sys.stderr.write(self.format(record) + "\n")
            return
        exc = record.exc_info[1] if record.exc_info else None
        port.log(
            {
                "stream": "acp-sdk",
                "line": record.getMessage() + (f": {type(exc).__name__}: {exc}" if exc else ""),
            }
        )


_sdk_log_installed = False


def _install_sdk_log() -> None:
    global _sdk_log_installed
    if not _sdk_log_installed:
        logging.getLogger().addHandler(_SdkLog())
        _sdk_log_installed = True


# -- settings ----------------------------------------------------------------------


@dataclass(frozen=True)
class AcpSettings:
    """What the ACP transport needs beyond a :class:`Launch`."""

    workspace: Path
    task: Mapping[str, Any] = field(default_factory=dict)
    permissions: Mapping[str, str] = field(default_factory=dict)
    prompts: Mapping[str, str] = field(default_factory=dict)
    test_cmd: str | list[str] | None = None
    # Makes a checkpoint of the workspace and lists what changed between two.
    take: Callable[[], str] | None = None
    changed: Callable[[str, str], list[str]] | None = None
    init_timeout_s: float = INIT_TIMEOUT_S


class AcpTransport:
    """Starts ACP agents; ``settings`` maps a role to its :class:`AcpSettings`."""

    def __init__(self, settings: Callable[[str], AcpSettings]) -> None:
        self.settings = settings

    def start(self, launch: Launch, inbox: Inbox) -> AcpPort:
        """Start the agent; its ``ready`` item follows once it answers ``initialize``."""
        port = AcpPort(launch, inbox, self.settings(launch.role))
        port.begin()
        return port


# -- terminals (terminal/*) ---------------------------------------------------------


@dataclass
class _Terminal:
    proc: asyncio.subprocess.Process
    limit: int
    output: bytearray = field(default_factory=bytearray)
    truncated: bool = False
    reader: asyncio.Task[None] | None = None

    async def read(self) -> None:
        assert self.proc.stdout is not None
        while chunk := await self.proc.stdout.read(65536):
            self.output += chunk
            if len(self.output) > self.limit:
                # Keep the tail, cut at a character boundary (ACP asks for it).
                del self.output[: len(self.output) - self.limit]
                while self.output and (self.output[0] & 0xC0) == 0x80:
                    del self.output[0]
                self.truncated = True

    def exit_status(self) -> s.TerminalExitStatus | None:
        rc = self.proc.returncode
        if rc is None:
            return None
        if rc < 0:
            return s.TerminalExitStatus(exit_code=None, signal=signal.Signals(-rc).name)
        return s.TerminalExitStatus(exit_code=rc, signal=None)

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGKILL)


# -- the port ------------------------------------------------------------------------


class AcpPort:
    """One ACP agent process, driven by the engine (see :class:`lorch.transport.AgentPort`)."""

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
        self._loop = _Loop.get()
        self._proc: asyncio.subprocess.Process | None = None
        self._conn: Any = None
        self._turn: concurrent.futures.Future[None] | None = None
        self._command: Record | None = None
        self._session: str | None = None
        self._text: list[str] = []
        self._tools: dict[str, tuple[str, str]] = {}
        self._terminals: dict[str, _Terminal] = {}
        self._beat_at = 0.0
        self._exited = threading.Event()
        self._exit_posted = False
        self._flush_due = False
        self._held: list[Incoming] = []
        self._turn_end: TurnCheckpoint | None = None
        self._post_due = False
        launch.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._log: IO[str] = open(launch.log_path, "a", encoding="utf-8")  # noqa: SIM115
        os.chmod(launch.log_path, 0o600)

    # -- start ---------------------------------------------------------------------

    def begin(self) -> None:
        """Start the agent and ask ``initialize``, without waiting for the answer.

        A ``ready`` item follows once it answers, or an ``exit`` item whose
        ``reason`` says why not (the agent is killed): the engine starts every
        role this way at once and waits for them together (``await_ready``).
        Raises :class:`AgentError` only when the process cannot be started.
        """
        _install_sdk_log()
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
            raise AgentError(f"agent {self.role} ({self.argv[0]}): {reason}")

    def _stderr_hint(self) -> str:
        return f"; its stderr said: {self.last_stderr}" if self.last_stderr else ""

    async def _spawn(self, timeout: float) -> None:
        token = _PORT.set(self)  # the connection's tasks inherit it
        try:
            try:
                proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=str(self.launch.cwd),
                    env=dict(self.launch.env),
                    start_new_session=True,  # its own process group: killed as one
                    limit=LINE_LIMIT,
                )
            except OSError as e:
                raise AgentError(f"agent {self.role}: cannot start {self.argv[0]}: {e}") from None
            self._proc = proc
            self.pid = self.pgid = proc.pid
            self.start_time = _start_time(proc.pid)
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._drain_stderr(proc))]
            client = cast(sdk.Client, _Client(self))  # elicitation: not offered
            conn = sdk.connect_to_agent(client, proc.stdin, proc.stdout, observers=[self._observe])
            _lenient_session_updates(conn, self)
            self._conn = conn
            self._init_task = loop.create_task(self._initialize(proc, conn, timeout))
            self._tasks.append(loop.create_task(self._watch_exit(proc)))
        finally:
            _PORT.reset(token)

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
                        fs=s.FileSystemCapabilities(read_text_file=True, write_text_file=True),
                        terminal=True,
                    ),
                    client_info=s.Implementation(name="lorch", version=__version__),
                ),
                timeout,
            )
        except TimeoutError:
            reason = f"no answer to ACP initialize in {timeout:g} s" + self._stderr_hint()
        except sdk.RequestError as e:
            reason = f"ACP initialize failed: {e} (code {e.code})"
        except (ConnectionError, ValidationError) as e:
            await asyncio.sleep(0)  # let the stderr reader catch up
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 1.0)
            what = (
                f"exited (code {proc.returncode})"
                if proc.returncode is not None
                else f"answered initialize with a bad message: {_one_line(e)}"
            )
            reason = f"{what} before ACP initialize completed" + self._stderr_hint()
        except Exception as e:  # an SDK fault must not leave the start-up hanging
            reason = f"ACP initialize failed: {_one_line(e)}"
        if reason:
            self._unready = reason
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
        else:
            self.inbox.post(Incoming(self.role, self.generation, "ready"))
        return reason

    # -- the engine's side -------------------------------------------------------

    def send(self, command: dict[str, Any], line: bytes, context: SendContext) -> bool:
        if not self.alive():
            return False
        self._command = command
        self._turn = self._loop.spawn(self._run_turn(command, context))
        return True

    def cancel(self) -> None:
        if self.alive() and self._session is not None and self._conn is not None:
            with contextlib.suppress(Exception):
                self._loop.run(self._conn.cancel(session_id=self._session), CANCEL_GRACE_S)

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
        self._signal(signal.SIGKILL)
        rc = self._wait(5.0)
        self._release()
        return rc

    def _signal(self, sig: int) -> None:
        if self.pgid > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, sig)

    def _wait(self, timeout: float) -> int | None:
        if self._proc is None:
            return None
        self._exited.wait(timeout)
        return self._proc.returncode

    def _release(self) -> None:
        for term in self._terminals.values():
            term.kill()
        self._terminals.clear()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            with contextlib.suppress(Exception):
                self._loop.run(conn.close(), 2.0)
        with contextlib.suppress(Exception):
            self._loop.run(self._close_log(), 2.0)

    async def _close_log(self) -> None:
        self._log.close()

    # -- items for the engine ------------------------------------------------------

    def _post(
        self, message: Record, *, now: bool = False, checkpoint: TurnCheckpoint | None = None
    ) -> None:
        """Hand an event to the engine; lines of a turn go in bursts, its end at once.

        Waking the engine's thread costs more than the line itself, so what a
        turn says waits up to ``POST_EVERY_S`` for company (never past the
        terminal event, which flushes what is held first).
        """
        message = self._clean(message)
        self._hold(
            Incoming(
                self.role,
                self.generation,
                "event",
                message=message,
                raw_size=len(protocol.encode(message)),
                checkpoint=checkpoint,
            ),
            now,
        )

    def _hold(self, item: Incoming, now: bool = False) -> None:
        self._held.append(item)
        if now:
            self._post_held()
        elif not self._post_due:
            self._post_due = True
            self._loop.loop.call_later(POST_EVERY_S, self._post_held)

    def _post_held(self) -> None:
        self._post_due = False
        held, self._held = self._held, []
        if held:
            self.inbox.post_many(held)

    def _beat(self) -> None:
        now = time.monotonic()
        if now - self._beat_at >= HEARTBEAT_EVERY_S:
            self._beat_at = now
            self.inbox.post(Incoming(self.role, self.generation, "heartbeat"))

    def say(self, message: str, **payload: Any) -> None:
        """A line of this turn for the ledger and the live transcript (after its text so far)."""
        self._flush_text()
        self._say(message, **payload)

    def _say(self, message: str, **payload: Any) -> None:
        if self._command is not None:
            self._post(log_event(self._command, self.agent_id, message, **payload))

    def _clean(self, value: Any) -> Any:
        """What the agent said, fit for the ledger and a terminal: redacted, no control
        characters (an escape sequence must not reach the user's terminal), cut to size."""
        if isinstance(value, str):
            text = _CONTROL.sub("?", self.launch.redactor.text(value))
            return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"
        if isinstance(value, dict):
            # Artifacts are lorch's own (paths it listed, hashes it computed): whole.
            return {k: v if k == "artifacts" else self._clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._clean(v) for v in value[:LIST_LIMIT]]
        return value

    def log(self, entry: Record) -> None:
        if self._log.closed:
            return
        line = json.dumps({"at": protocol.now_rfc3339(), **entry}, ensure_ascii=False)
        self._log.write(self.launch.redactor.text(line) + "\n")
        # Flushed soon rather than per line: one write for a burst of messages.
        if not self._flush_due:
            self._flush_due = True
            self._loop.loop.call_later(LOG_FLUSH_S, self._flush_log)

    def _flush_log(self) -> None:
        self._flush_due = False
        if not self._log.closed:
            self._log.flush()

    def _observe(self, event: StreamEvent) -> None:
        direction = "in" if event.direction == StreamDirection.INCOMING else "out"
        self.log({"stream": "acp", "dir": direction, "message": event.message})
        if direction == "in" and event.message.get("method") == "session/update":
            self._beat()

    async def _drain_stderr(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        while True:
            try:
                raw = await proc.stderr.readline()
            except (ValueError, asyncio.LimitOverrunError):
                raw = await proc.stderr.read(65536)
            if not raw:
                return
            text = raw.decode("utf-8", "replace").rstrip("\n")
            self.last_stderr = self.launch.redactor.text(text)[-500:]
            self.log({"stream": "stderr", "line": text})
            if self.launch.on_stderr is not None:
                self.launch.on_stderr(f"[{self.role} stderr] {self.last_stderr}")

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        if self._init_task is not None and not self._init_task.done():
            # Exited during initialize: its exit item carries why (said at once).
            await asyncio.wait({self._init_task}, timeout=5.0)
        self._post_held()  # what it said before it went, then the exit
        self._exited.set()
        for term in self._terminals.values():
            term.kill()
        if not self._exit_posted:
            self._exit_posted = True
            self.inbox.post(Incoming(self.role, self.generation, "exit", reason=self._unready))

    # -- one turn -------------------------------------------------------------------

    async def _run_turn(self, command: Record, context: SendContext) -> None:
        token = _PORT.set(self)
        try:
            message = await self._turn_body(command, context)
        except (ConnectionError, asyncio.CancelledError):
            return  # the agent is gone: its exit item tells the engine
        except Exception as e:  # an SDK or agent fault must not end lorch
            if not self.alive():
                return
            message = error_event(command, self.agent_id, "acp_error", _one_line(e))
        finally:
            _PORT.reset(token)
        self._flush_text()
        self._flush_log()
        if self.alive() or message.get("event") != "error":
            end = self._turn_end if message.get("event") != "error" else None
            self._post(message, now=True, checkpoint=end)

    async def _turn_body(self, command: Record, context: SendContext) -> Record:
        st = self.settings
        action = str(command["action"])
        self._text.clear()
        self._tools.clear()
        self._turn_end = None
        pre = context.checkpoint
        if pre is None and st.take is not None:
            pre = await asyncio.to_thread(st.take)
        verdict_rel = prompts.verdict_path(action, str(command["task_id"]))
        if verdict_rel is not None:
            # A verdict counts only if this turn wrote it: the last round's goes
            # (the pre-turn checkpoint holds it, so a rollback brings it back).
            with contextlib.suppress(OSError, PathEscape):
                agent_path(st.workspace, verdict_rel).unlink(missing_ok=True)
        conn = self._conn
        try:
            session = await conn.new_session(cwd=str(st.workspace), mcp_servers=[])
            self._session = session.session_id
            text = prompts.render(command, st.task, st.workspace, st.prompts)
            response = await conn.prompt(
                session_id=session.session_id, prompt=[sdk.text_block(text)]
            )
        except sdk.RequestError as e:
            if e.code == AUTH_REQUIRED:
                what = f"{command['action']} of task {command['task_id']}"
                return error_event(command, self.agent_id, "auth_required", self.auth_message(what))
            return error_event(
                command,
                self.agent_id,
                "acp_error",
                f"agent {self.role}: {e} (code {e.code})" + _data(e.data),
            )
        finally:
            self._session = None
        self._flush_text()
        stop = str(response.stop_reason)
        if stop not in FINISHED:
            return error_event(
                command,
                self.agent_id,
                f"stop_{stop}",
                f"agent {self.role} ended its turn with stopReason {stop!r}",
            )
        post = await asyncio.to_thread(st.take) if st.take is not None else None
        changed = (
            st.changed(pre, post) if (pre is not None and post is not None and st.changed) else []
        )
        if post is not None and context.checkpoint is not None:
            # The engine records it as the post checkpoint: taken once, not twice.
            self._turn_end = TurnCheckpoint(post, tuple(changed))
        arts, deleted = artifacts(st.workspace, changed)
        extra: Record = {"stop_reason": stop}
        if verdict_rel is None:
            tests = await self._tests(command)
            return builder_completed(command, self.agent_id, arts, deleted, tests, extra)
        try:
            rel, verdict = read_verdict(st.workspace, action, str(command["task_id"]))
        except VerdictError as e:
            return error_event(command, self.agent_id, "invalid_verdict", str(e))
        if rel not in {a["path"] for a in arts}:
            arts = [*arts, *artifacts(st.workspace, [rel])[0]]
        return verdict_event(command, self.agent_id, rel, verdict, arts, extra)

    def auth_message(self, what: str) -> str:
        methods = []
        for m in (self.init.auth_methods if self.init else None) or []:
            text = m.name + (f" ({m.description})" if getattr(m, "description", None) else "")
            names = [v.name for v in getattr(m, "vars", None) or []]
            if names:
                text += f": set {', '.join(names)}"
            methods.append(text)
        advertised = "; ".join(methods) if methods else "none advertised"
        return (
            f"agent {self.role} ({self.argv[0]}) needs authentication for {what}; "
            f"auth methods: {advertised} "
            f"(a variable it needs must be listed in $.agents.{self.role}.pass_env or env)"
        )

    async def _tests(self, command: Record) -> Record:
        cmd = self.settings.test_cmd
        if not cmd:
            self.say(f"tests: {NO_TESTS}", acp="tests")
            return {"status": "pass", "summary": NO_TESTS}
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        shown = cmd if isinstance(cmd, str) else " ".join(cmd)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=str(self.settings.workspace),
                env=dict(self.launch.env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as e:
            summary = f"{shown}: cannot run: {e.strerror}"
            self.say(f"tests: {summary}", acp="tests")
            return {"status": "fail", "summary": summary}
        out, _ = await proc.communicate()
        self.log({"stream": "tests", "line": out.decode("utf-8", "replace")[-TEXT_LIMIT:]})
        last = next(
            (ln for ln in reversed(out.decode("utf-8", "replace").splitlines()) if ln.strip()),
            "",
        )
        status = "pass" if proc.returncode == 0 else "fail"
        summary = f"{shown}: exit {proc.returncode}" + (f": {last.strip()[:300]}" if last else "")
        self.say(f"tests {status}: {summary}", acp="tests")
        return {"status": status, "summary": summary}

    # -- what the agent says ----------------------------------------------------------

    def _flush_text(self) -> None:
        if self._text:
            text = "".join(self._text).strip()
            self._text.clear()
            if text:
                cut = text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"
                self._say(cut, acp="agent_message")

    def on_update(self, update: Any) -> None:
        kind = getattr(update, "session_update", "")
        if kind == "agent_message_chunk":
            text = getattr(update.content, "text", None)
            if isinstance(text, str):
                self._text.append(text)
                if sum(map(len, self._text)) >= TEXT_LIMIT:
                    self._flush_text()
            return
        if kind in (
            "agent_thought_chunk",
            "user_message_chunk",
            "usage_update",
            "available_commands_update",
            "current_mode_update",
            "config_option_update",
            "session_info_update",
        ):
            return  # in the log only
        self._flush_text()
        if kind == "tool_call":
            tid, title = update.tool_call_id, update.title
            tkind = str(update.kind or "other")
            self._tools[tid] = (tkind, title)
            self.say(
                f"tool {tkind}: {title} [{update.status or 'pending'}]",
                acp="tool_call",
                tool_call_id=tid,
                kind=tkind,
                title=title,
                status=update.status or "pending",
            )
        elif kind == "tool_call_update":
            status = update.status
            if status in ("completed", "failed"):
                tkind, title = self._tools.get(
                    update.tool_call_id, (str(update.kind or "other"), update.title or "?")
                )
                self.say(
                    f"tool {tkind}: {update.title or title} [{status}]",
                    acp="tool_call",
                    tool_call_id=update.tool_call_id,
                    kind=tkind,
                    title=update.title or title,
                    status=status,
                )
        elif kind == "plan":
            entries = getattr(update, "entries", None) or []
            shown = "; ".join(f"[{e.status}] {e.content}" for e in entries)
            self.say(f"plan: {shown}", acp="plan", entries=len(entries))

    def in_turn(self, session_id: str, request: str) -> bool:
        """Is ``session_id`` the session of the turn in flight? A request outside
        it has no command to be recorded for: it is refused, and logged."""
        if self._command is not None and session_id == self._session:
            return True
        self.log({"stream": "acp", "refused": f"{request} outside the turn in flight"})
        return False

    def decided(self, request: str, title: str, decision: Any) -> None:
        """A permission decision: a ``system.permission`` record (the engine writes it),
        in order with the turn's lines, so the transcript shows it where it was made."""
        self._flush_text()
        payload = {
            "request": request,
            "kind": decision.kind,
            "title": title,
            "paths": [self._shown_path(p) for p in decision.paths],
            "allowed": decision.allowed,
            "option": decision.option_id,
            "rule": decision.rule,
            "reason": decision.reason,
        }
        record = {"event": "system.permission", "payload": self._clean(payload)}
        self._hold(Incoming(self.role, self.generation, "permission", message=record))

    def _shown_path(self, path: str) -> str:
        """A path as the transcript shows it: relative when inside the workspace."""
        try:
            return (
                agent_path(self.settings.workspace, path)
                .relative_to(os.path.realpath(self.settings.workspace))
                .as_posix()
            )
        except (PathEscape, ValueError):
            return path

    def terminal(self, terminal_id: str) -> _Terminal:
        term = self._terminals.get(terminal_id)
        if term is None:
            raise sdk.RequestError.invalid_params({"details": f"no terminal {terminal_id!r}"})
        return term

    async def new_terminal(
        self,
        command: str,
        args: list[str],
        env: Mapping[str, str],
        cwd: str | None,
        limit: int | None,
    ) -> str:
        where = self.settings.workspace
        if cwd:
            try:
                where = agent_path(self.settings.workspace, cwd) if cwd != str(where) else where
            except PathEscape as e:
                raise sdk.RequestError.invalid_params({"details": str(e)}) from None
        proc = await asyncio.create_subprocess_exec(
            command,
            *args,
            cwd=str(where),
            env={**self.launch.env, **env},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        term = _Terminal(proc, min(limit or TERMINAL_OUTPUT_LIMIT, TERMINAL_OUTPUT_LIMIT))
        term.reader = asyncio.get_running_loop().create_task(term.read())
        tid = f"term-{proc.pid}"
        self._terminals[tid] = term
        return tid

    def release_terminal(self, terminal_id: str) -> None:
        term = self._terminals.pop(terminal_id, None)
        if term is not None:
            term.kill()


def _start_time(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _close_quietly(stream: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        stream.close()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:500]


def _data(data: Any) -> str:
    if not data:
        return ""
    return ": " + json.dumps(data, ensure_ascii=False)[:300]


def _lenient_session_updates(conn: Any, port: AcpPort) -> None:
    """A session/update the SDK's models reject is logged and skipped, never fatal.

    Adapters drift from the schema (one sends ``usage_update.used = null``); the
    SDK would log a traceback for such a notification. This wraps the
    connection's dispatcher so the rejection is one line in the agent's log.
    """
    inner = conn._conn._handler

    async def handler(method: str, params: Any, is_notification: bool) -> Any:
        if method == "session/update" and is_notification:
            try:
                return await inner(method, params, is_notification)
            except ValidationError as e:
                port.log(
                    {
                        "stream": "acp",
                        "skipped": "session/update the SDK's models reject",
                        "error": _one_line(e),
                    }
                )
                return None
        return await inner(method, params, is_notification)

    conn._conn._handler = handler


class _Client:
    """The client side of ACP: what the agent may ask of lorch."""

    def __init__(self, port: AcpPort) -> None:
        self.port = port

    def on_connect(self, conn: Any) -> None:
        pass

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.port.on_update(update)

    async def request_permission(
        self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any
    ) -> s.RequestPermissionResponse:
        if not self.port.in_turn(session_id, "session/request_permission"):
            return s.RequestPermissionResponse(outcome=s.DeniedOutcome(outcome="cancelled"))
        decision = self.port.policy.decide(tool_call, options)
        title = getattr(tool_call, "title", None) or decision.kind
        self.port.decided("session/request_permission", str(title), decision)
        if decision.option_id is None:
            return s.RequestPermissionResponse(outcome=s.DeniedOutcome(outcome="cancelled"))
        return s.RequestPermissionResponse(
            outcome=s.AllowedOutcome(outcome="selected", option_id=decision.option_id)
        )

    def _path(self, path: str, what: str) -> Path:
        try:
            return agent_path(self.port.settings.workspace, path)
        except PathEscape as e:
            self.port.say(f"refused {what} {path}: {e}", acp="fs", allowed=False, path=path)
            raise sdk.RequestError.invalid_params({"details": str(e)}) from None

    async def read_text_file(
        self,
        session_id: str,
        path: str,
        line: int | None = None,
        limit: int | None = None,
        **kwargs: Any,
    ) -> s.ReadTextFileResponse:
        full = self._path(path, "fs/read_text_file")
        try:
            text = full.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise sdk.RequestError.resource_not_found(path) from None
        except OSError as e:
            raise sdk.RequestError.invalid_params({"details": f"{path}: {e.strerror}"}) from None
        if line is not None or limit is not None:
            lines = text.splitlines(keepends=True)
            start = max((line or 1) - 1, 0)
            text = "".join(lines[start : start + limit if limit is not None else None])
        return s.ReadTextFileResponse(content=text)

    async def write_text_file(
        self, session_id: str, path: str, content: str, **kwargs: Any
    ) -> s.WriteTextFileResponse:
        full = self._path(path, "fs/write_text_file")
        try:
            # Small and local: written on the loop, no thread hand-off.
            _write_file(full, content.encode("utf-8"))
        except OSError as e:
            raise sdk.RequestError.invalid_params({"details": f"{path}: {e.strerror}"}) from None
        return s.WriteTextFileResponse()

    async def create_terminal(
        self,
        session_id: str,
        command: str,
        args: list[str] | None = None,
        env: list[Any] | None = None,
        cwd: str | None = None,
        output_byte_limit: int | None = None,
        **kwargs: Any,
    ) -> s.CreateTerminalResponse:
        if not self.port.in_turn(session_id, "terminal/create"):
            raise sdk.RequestError.invalid_params({"details": "no turn in flight"})
        decision = self.port.policy.may_execute(command)
        shown = " ".join([command, *(args or [])])
        self.port.decided("terminal/create", shown, decision)
        if not decision.allowed:
            raise sdk.RequestError.invalid_params({"details": "execute is not allowed by lorch"})
        variables = {v.name: v.value for v in env or []}
        try:
            tid = await self.port.new_terminal(
                command, list(args or []), variables, cwd, output_byte_limit
            )
        except OSError as e:
            raise sdk.RequestError.invalid_params({"details": f"{command}: {e}"}) from None
        return s.CreateTerminalResponse(terminal_id=tid)

    async def terminal_output(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> s.TerminalOutputResponse:
        term = self.port.terminal(terminal_id)
        return s.TerminalOutputResponse(
            output=term.output.decode("utf-8", "replace"),
            truncated=term.truncated,
            exit_status=term.exit_status(),
        )

    async def wait_for_terminal_exit(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> s.WaitForTerminalExitResponse:
        term = self.port.terminal(terminal_id)
        await term.proc.wait()
        if term.reader is not None:
            await term.reader
        status = term.exit_status()
        assert status is not None
        return s.WaitForTerminalExitResponse(exit_code=status.exit_code, signal=status.signal)

    async def kill_terminal(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> s.KillTerminalResponse:
        self.port.terminal(terminal_id).kill()
        return s.KillTerminalResponse()

    async def release_terminal(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> s.ReleaseTerminalResponse:
        self.port.release_terminal(terminal_id)
        return s.ReleaseTerminalResponse()

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise sdk.RequestError.method_not_found(method)

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        return None


def _write_file(path: Path, data: bytes) -> None:
    """Write an agent's file whole (temp file, rename), keeping an existing file's mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o644
    tmp = path.with_name(f".{path.name}.lorch-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def describe_init(init: s.InitializeResponse) -> str:
    """The ``initialize`` answer in one line: agent, version, loadSession, auth methods."""
    info = init.agent_info
    who = f"{info.name} {info.version}" if info is not None else "agent (no agentInfo)"
    caps = init.agent_capabilities
    load = "yes" if caps is not None and caps.load_session else "no"
    methods = [m.id + (f" ({m.name})" if m.name != m.id else "") for m in init.auth_methods or []]
    return f"{who}, ACP protocol {init.protocol_version}, loadSession: {load}, auth methods: " + (
        ", ".join(methods) if methods else "none"
    )


def describe_session(port: AcpPort) -> str:
    """What a started agent answered to ``initialize``, once a session opens too.

    Raises :class:`AgentError` with the exact failure (no session: it needs
    authentication, or ``session/new`` failed or got no answer).
    """
    assert port.init is not None and port._conn is not None
    text = describe_init(port.init)
    try:
        port._loop.run(
            port._conn.new_session(cwd=str(port.settings.workspace), mcp_servers=[]),
            port.settings.init_timeout_s,
        )
    except sdk.RequestError as e:
        if e.code == AUTH_REQUIRED:
            raise AgentError(f"{text}; but {port.auth_message('a session')}") from None
        raise AgentError(f"{text}; but session/new failed: {e} (code {e.code})") from None
    except (concurrent.futures.TimeoutError, TimeoutError):
        raise AgentError(f"{text}; but no answer to session/new") from None
    return text
