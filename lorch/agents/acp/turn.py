"""One command attempt on an ACP agent: a session, the prompt, the terminal event.

lorch opens a session (``cwd`` = the workspace), sends the prompt
(:mod:`lorch.agents.acp.prompts`) and, when the turn ends, builds the terminal event
itself (:mod:`lorch.agents.acp.events`): the builder's artifacts are the files the
turn changed between two workspace checkpoints, its tests are
``task.test_cmd`` run by lorch; a reviewer's or spec maintainer's verdict is the
file the prompt asked for, which only this turn may have written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from typing import TYPE_CHECKING, Any

import acp as sdk

from lorch.agents import procs
from lorch.agents.acp import prompts
from lorch.agents.acp.events import (
    NO_TESTS,
    VerdictError,
    artifacts,
    builder_completed,
    error_event,
    one_line,
    read_verdict,
    verdict_event,
)
from lorch.agents.acp.loop import PORT
from lorch.agents.acp.outbox import TEXT_LIMIT
from lorch.agents.acp.policy import agent_path
from lorch.agents.procs import signal_group
from lorch.agents.transport import SendContext, TurnCheckpoint
from lorch.wire.errors import PathEscape
from lorch.wire.protocol import Record
from lorch.wire.redact import Redactor

if TYPE_CHECKING:
    from lorch.agents.acp.host import Host

AUTH_REQUIRED = -32000
FINISHED = ("end_turn", "max_tokens", "max_turn_requests")
DATA_LIMIT = 300  # characters of an error's data shown in its message
SUMMARY_LIMIT = 300  # characters of the test output's last line in its summary
TEST_OUTPUT_KEPT = 1 << 16  # bytes of the test output's tail kept for the log
# How long the test command's output may still be read once its group is killed
# (a process that left the group may hold the pipe).
TEST_DRAIN_S = 2.0


class Turn:
    """``command`` on ``port``'s agent, once (:meth:`run`, on the port's loop)."""

    def __init__(self, port: Host, command: Record, context: SendContext) -> None:
        self.port = port
        self.command = command
        self.context = context
        # The checkpoint taken at the turn's end, when the engine asked for it.
        self.end: TurnCheckpoint | None = None

    async def run(self) -> None:
        """Run the turn and post its terminal event (unless the agent is gone)."""
        port, command = self.port, self.command
        token = PORT.set(port)
        try:
            message = await self._body()
        except (ConnectionError, asyncio.CancelledError):
            return  # the agent is gone (its exit item tells the engine) or faulted (its error)
        except Exception as e:  # an SDK or agent fault must not end lorch
            if not port.alive() or port.faulted is not None:
                return
            message = error_event(
                command, port.agent_id, "acp_error", one_line(e, port.launch.redactor)
            )
        finally:
            PORT.reset(token)
        if port.faulted is not None:
            return  # its error item has ended the attempt already
        port.out.flush_text()
        port.release_held()
        port.flush_log()
        if port.alive() or message.get("event") != "error":
            end = self.end if message.get("event") != "error" else None
            port.out.post(message, now=True, checkpoint=end)

    async def _body(self) -> Record:
        port, command, st = self.port, self.command, self.port.settings
        action = str(command["action"])
        port.out.start_turn()
        pre = self.context.checkpoint
        if pre is None and st.take is not None:
            pre = await asyncio.to_thread(st.take)
        verdict_rel = prompts.verdict_path(action, str(command["task_id"]))
        if verdict_rel is not None:
            # A verdict counts only if this turn wrote it: the last round's goes
            # (the pre-turn checkpoint holds it, so a rollback brings it back).
            with contextlib.suppress(OSError, PathEscape):
                agent_path(st.workspace, verdict_rel).unlink(missing_ok=True)
        conn = port.conn
        try:
            session = await conn.new_session(cwd=str(st.workspace), mcp_servers=[])
            port.session = session.session_id
            text = prompts.render(command, st.task, st.workspace, st.prompts)
            response = await conn.prompt(
                session_id=session.session_id, prompt=[sdk.text_block(text)]
            )
        except sdk.RequestError as e:
            if e.code == AUTH_REQUIRED:
                what = f"{command['action']} of task {command['task_id']}"
                message = port.auth_message(what, e)
                return error_event(command, port.agent_id, "auth_required", message)
            return error_event(
                command,
                port.agent_id,
                "acp_error",
                f"agent {port.role}: {e} (code {e.code})" + _data(e.data, port.launch.redactor),
            )
        finally:
            port.session = None
        port.out.flush_text()
        stop = str(response.stop_reason)
        if stop not in FINISHED:
            return error_event(
                command,
                port.agent_id,
                f"stop_{stop}",
                f"agent {port.role} ended its turn with stopReason {stop!r}",
            )
        return await self._finished(pre, verdict_rel, {"stop_reason": stop})

    async def _finished(self, pre: str | None, verdict_rel: str | None, extra: Record) -> Record:
        """The terminal event of a turn that ended: what it changed, with its tests or verdict."""
        port, command, st = self.port, self.command, self.port.settings
        post = await asyncio.to_thread(st.take) if st.take is not None else None
        changed = (
            st.changed(pre, post) if (pre is not None and post is not None and st.changed) else []
        )
        if post is not None and self.context.checkpoint is not None:
            # The engine records it as the post checkpoint: taken once, not twice.
            self.end = TurnCheckpoint(post, tuple(changed))
        arts, deleted = artifacts(st.workspace, changed)
        if verdict_rel is None:
            tests = await self._tests()
            return builder_completed(command, port.agent_id, arts, deleted, tests, extra)
        try:
            rel, verdict = read_verdict(
                st.workspace, str(command["action"]), str(command["task_id"])
            )
        except VerdictError as e:
            return error_event(command, port.agent_id, "invalid_verdict", str(e))
        if rel not in {a["path"] for a in arts}:
            arts = [*arts, *artifacts(st.workspace, [rel])[0]]
        return verdict_event(command, port.agent_id, rel, verdict, arts, extra)

    async def _tests(self) -> Record:
        port = self.port
        cmd = port.settings.test_cmd
        if not cmd:
            port.out.say(f"tests: {NO_TESTS}", acp="tests")
            return {"status": "pass", "summary": NO_TESTS}
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        shown = cmd if isinstance(cmd, str) else " ".join(cmd)
        timeout = port.settings.test_timeout_s
        try:
            proc = await procs.spawn_async(
                # In the builder's sandbox: it runs what the builder wrote; its own
                # process group: whatever it starts ends with it.
                port.launch.wrap(argv, port.settings.workspace),
                cwd=str(port.settings.workspace),
                env=dict(port.launch.env),
                stdin=procs.DEVNULL,
                stderr=procs.STDOUT,
            )
        except OSError as e:
            summary = f"{shown}: cannot run: {e.strerror}"
            port.out.say(f"tests: {summary}", acp="tests")
            return {"status": "fail", "summary": summary}
        # The port ends the group if the turn is abandoned (Host.kill, lorch exiting).
        port.test_groups.add(proc.pid)
        out = bytearray()
        assert proc.stdout is not None
        reader = asyncio.ensure_future(_read_tail(proc.stdout, out))
        rc: int | None = None
        try:
            rc = await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            pass
        finally:
            # Done, timed out or abandoned: nothing the command started outlives the turn.
            signal_group(proc.pid, signal.SIGKILL)
            port.test_groups.discard(proc.pid)
            if rc is None:
                reader.cancel()
        code = await proc.wait()
        if rc is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), TEST_DRAIN_S)
            reader.cancel()
        red = port.launch.redactor
        text = out.decode("utf-8", "replace")
        port.log({"stream": "tests", "line": red.tail(text, TEXT_LIMIT)})
        last = next((ln for ln in reversed(text.splitlines()) if ln.strip()), "").strip()
        said = f": {red.cut(last, SUMMARY_LIMIT)}" if last else ""
        if rc is None:
            status = "fail"
            summary = (
                f"{shown}: timed out after {timeout:g} s ($.agents.{port.role}.test_timeout_s); "
                "its process group was killed" + said
            )
        else:
            status = "pass" if code == 0 else "fail"
            summary = f"{shown}: exit {code}{said}"
        port.out.say(f"tests {status}: {summary}", acp="tests")
        return {"status": status, "summary": summary}


async def _read_tail(stream: asyncio.StreamReader, out: bytearray) -> None:
    """Read ``stream`` to its end, keeping only its last :data:`TEST_OUTPUT_KEPT` bytes."""
    while chunk := await stream.read(65536):
        out += chunk
        if len(out) > TEST_OUTPUT_KEPT:
            del out[: len(out) - TEST_OUTPUT_KEPT]


def _data(data: Any, redactor: Redactor) -> str:
    """An error's data for its message: redacted as decoded values, then cut."""
    if not data:
        return ""
    try:
        text = json.dumps(redactor.value(data), ensure_ascii=False)
    except (TypeError, ValueError):
        return ""
    return ": " + redactor.cut(text, DATA_LIMIT)
