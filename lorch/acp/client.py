"""The client side of ACP: what the agent may ask of lorch.

Permission requests are answered by the role's policy (:mod:`lorch.acp.policy`)
and recorded; ``fs/*`` reads and writes files inside the workspace only;
``terminal/*`` runs commands there (:mod:`lorch.acp.terminals`) when the policy
allows ``execute``. A request outside the turn in flight is refused.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import acp as sdk
from acp import schema as s
from pydantic import ValidationError

from lorch.acp.events import one_line
from lorch.acp.policy import agent_path
from lorch.errors import PathEscape

if TYPE_CHECKING:
    from lorch.acp.port import AcpPort


def lenient_session_updates(conn: Any, port: AcpPort) -> None:
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


class Client:
    """The client side of ACP: what the agent may ask of lorch."""

    def __init__(self, port: AcpPort) -> None:
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
        decision = self.port.policy.decide(tool_call, options)
        title = getattr(tool_call, "title", None) or decision.kind
        self.port.out.decided("session/request_permission", str(title), decision)
        if decision.option_id is None:
            return s.RequestPermissionResponse(outcome=s.DeniedOutcome(outcome="cancelled"))
        return s.RequestPermissionResponse(
            outcome=s.AllowedOutcome(outcome="selected", option_id=decision.option_id)
        )

    def _path(self, path: str, what: str) -> Path:
        try:
            return agent_path(self.port.settings.workspace, path)
        except PathEscape as e:
            self.port.out.say(f"refused {what} {path}: {e}", acp="fs", allowed=False, path=path)
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
        term = self.port.terminals.get(terminal_id)
        return s.TerminalOutputResponse(
            output=term.output.decode("utf-8", "replace"),
            truncated=term.truncated,
            exit_status=term.exit_status(),
        )

    async def wait_for_terminal_exit(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> s.WaitForTerminalExitResponse:
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
        self.port.terminals.get(terminal_id).kill()
        return s.KillTerminalResponse()

    async def release_terminal(
        self, session_id: str, terminal_id: str, **kwargs: Any
    ) -> s.ReleaseTerminalResponse:
        self.port.terminals.release(terminal_id)
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
