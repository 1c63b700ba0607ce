"""The client side of ACP: what the agent may ask of lorch.

Permission requests are answered by the role's policy (:mod:`lorch.agents.acp.policy`)
and recorded; ``fs/*`` reads and writes regular files inside the workspace only,
never through a symlink (:mod:`lorch.store.safefs`), never lorch's own files or
``.git/``, and a verdict directory only for the role that owns it;
``terminal/*`` runs commands there (:mod:`lorch.agents.acp.terminals`) when the policy
allows ``execute``. Every ``fs/*`` and ``terminal/*`` request for another session
than the turn in flight's, or when no turn is in flight, is refused.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING, Any

import acp as sdk
from acp import schema as s
from pydantic import ValidationError

from lorch.agents.acp.events import one_line
from lorch.agents.acp.policy import agent_relpath, refusal
from lorch.store import safefs
from lorch.wire.errors import PathEscape

if TYPE_CHECKING:
    from lorch.agents.acp.host import Host


def lenient_session_updates(conn: Any, port: Host) -> None:
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
                        "error": one_line(e),
                    }
                )
                return None
        return await inner(method, params, is_notification)

    conn._conn._handler = handler


# The most bytes fs/read_text_file answers: the JSON line of the answer stays
# under the ACP SDK's 50 MiB reader limit even if every byte needs a 6-byte
# escape. Past it, the agent is told to ask for fewer lines.
READ_LIMIT = 8 << 20


class Client:
    """The client side of ACP: what the agent may ask of lorch."""

    def __init__(self, port: Host) -> None:
        self.port = port

    def on_connect(self, conn: Any) -> None:
        pass

    async def session_update(self, session_id: str, update: Any, **kwargs: Any) -> None:
        self.port.out.on_update(update)

    async def request_permission(
        self, session_id: str, tool_call: Any, options: list[Any], **kwargs: Any
    ) -> s.RequestPermissionResponse:
        if not self.port.in_turn(session_id, "session/request_permission"):
            return s.RequestPermissionResponse(outcome=s.DeniedOutcome(outcome="cancelled"))
        decision = self.port.policy.decide(tool_call, options, self.port.role)
        title = getattr(tool_call, "title", None) or decision.kind
        self.port.out.decided("session/request_permission", str(title), decision)
        if decision.option_id is None:
            return s.RequestPermissionResponse(outcome=s.DeniedOutcome(outcome="cancelled"))
        return s.RequestPermissionResponse(
            outcome=s.AllowedOutcome(outcome="selected", option_id=decision.option_id)
        )

    def _turn(self, session_id: str, request: str) -> None:
        """Refuse a request for another session than the turn in flight's, or outside a turn."""
        if request.startswith("fs/") and not self.port.settings.fs:
            # lorch did not offer its file service ($.agents.ROLE.fs): an agent
            # asking anyway gets "method not found", as for any capability not offered.
            raise sdk.RequestError.method_not_found(request)
        if not self.port.in_turn(session_id, request):
            raise sdk.RequestError.invalid_params(
                {"details": f"{request}: session {session_id!r} has no turn in flight"}
            )

    def _refuse(self, what: str, path: str, why: str) -> sdk.RequestError:
        self.port.out.say(f"refused {what} {path}: {why}", acp="fs", allowed=False, path=path)
        return sdk.RequestError.invalid_params({"details": f"{path}: {why}"})

    def _rel(self, path: str, what: str, *, write: bool) -> str:
        """The workspace-relative path of an fs request, or the request refused (and said)."""
        ws = self.port.settings.workspace
        why = refusal(ws, path, self.port.role, write=write)
        if why is not None:
            raise self._refuse(what, path, why)
        try:
            return agent_relpath(ws, path)
        except PathEscape as e:  # the workspace itself: not a file
            raise self._refuse(what, path, str(e)) from None

    async def read_text_file(
        self,
        session_id: str,
        path: str,
        line: int | None = None,
        limit: int | None = None,
        **kwargs: Any,
    ) -> s.ReadTextFileResponse:
        what = "fs/read_text_file"
        self._turn(session_id, what)
        rel = self._rel(path, what, write=False)
        root = os.path.realpath(self.port.settings.workspace)
        try:
            # In a thread: a large file must not hold up the loop every agent shares.
            data = await asyncio.to_thread(_read, root, rel, line, limit)
        except FileNotFoundError:
            raise sdk.RequestError.resource_not_found(path) from None
        except PathEscape as e:
            raise self._refuse(what, path, str(e)) from None
        except safefs.TooLarge:
            raise self._refuse(
                what,
                path,
                f"more than {READ_LIMIT} bytes to return; ask for fewer lines (line, limit)",
            ) from None
        except OSError as e:
            raise self._refuse(what, path, str(e.strerror)) from None
        return s.ReadTextFileResponse(content=data.decode("utf-8", errors="replace"))

    async def write_text_file(
        self, session_id: str, path: str, content: str, **kwargs: Any
    ) -> s.WriteTextFileResponse:
        what = "fs/write_text_file"
        self._turn(session_id, what)
        rel = self._rel(path, what, write=True)
        root = os.path.realpath(self.port.settings.workspace)
        try:
            data = content.encode("utf-8")
        except UnicodeError:
            raise self._refuse(what, path, "content is not valid Unicode text") from None
        try:
            await asyncio.to_thread(safefs.write_file, root, rel, data)
        except PathEscape as e:
            raise self._refuse(what, path, str(e)) from None
        except OSError as e:
            raise self._refuse(what, path, str(e.strerror)) from None
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
        self._turn(session_id, "terminal/create")
        decision = self.port.policy.may_execute(command)
        shown = " ".join([command, *(args or [])])
        self.port.out.decided("terminal/create", shown, decision)
        if not decision.allowed:
            raise sdk.RequestError.invalid_params({"details": "execute is not allowed by lorch"})
        variables = {v.name: v.value for v in env or []}
        try:
            tid = await self.port.terminals.new(
                command, list(args or []), variables, cwd, output_byte_limit
            )
        except OSError as e:
            raise sdk.RequestError.invalid_params({"details": f"{command}: {e}"}) from None
        return s.CreateTerminalResponse(terminal_id=tid)

    async def terminal_output(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> s.TerminalOutputResponse:
        self._turn(session_id, "terminal/output")
        term = self.port.terminals.get(terminal_id)
        return s.TerminalOutputResponse(
            output=term.output.decode("utf-8", "replace"),
            truncated=term.truncated,
            exit_status=term.exit_status(),
        )

    async def wait_for_terminal_exit(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> s.WaitForTerminalExitResponse:
        self._turn(session_id, "terminal/wait_for_exit")
        term = self.port.terminals.get(terminal_id)
        await term.proc.wait()
        if term.reader is not None:
            await term.reader
        status = term.exit_status()
        assert status is not None
        return s.WaitForTerminalExitResponse(exit_code=status.exit_code, signal=status.signal)

    async def kill_terminal(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> s.KillTerminalResponse:
        self._turn(session_id, "terminal/kill")
        self.port.terminals.get(terminal_id).kill()
        return s.KillTerminalResponse()

    async def release_terminal(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> s.ReleaseTerminalResponse:
        self._turn(session_id, "terminal/release")
        self.port.terminals.release(terminal_id)
        return s.ReleaseTerminalResponse()

    async def ext_method(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        raise sdk.RequestError.method_not_found(method)

    async def ext_notification(self, method: str, params: dict[str, Any]) -> None:
        return None


def _read(root: str, rel: str, line: int | None, limit: int | None) -> bytes:
    """The bytes fs/read_text_file answers with: the whole file, or the lines asked for."""
    with safefs.opened(root, rel) as fd:
        if line is None and limit is None:
            return safefs.read_fd(fd, READ_LIMIT, rel)
        return safefs.read_lines(fd, line, limit, READ_LIMIT, rel)
