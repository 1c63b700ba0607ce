"""The terminals an ACP agent runs through lorch (``terminal/*``), inside the workspace.

Each command runs in its own process group (killed as one) with its output kept
up to a limit: the tail, cut at a character boundary, as ACP asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import acp as sdk
from acp import schema as s

from lorch.agents import procs
from lorch.agents.acp.policy import agent_path, refusal
from lorch.agents.transport import unsandboxed
from lorch.wire.errors import PathEscape

TERMINAL_OUTPUT_LIMIT = 1 << 20


@dataclass
class Terminal:
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


class Terminals:
    """One agent's terminals, by id; commands run in ``workspace`` with ``env``.

    ``wrap``: how a command runs in the agent's sandbox (``Launch.wrap``): a
    terminal sees no more of the machine than the agent that asked for it.
    """

    def __init__(
        self,
        workspace: Path,
        env: Mapping[str, str],
        wrap: Callable[[list[str], Path | None], list[str]] = unsandboxed,
    ) -> None:
        self.workspace = workspace
        self.env = env
        self.wrap = wrap
        self._terminals: dict[str, Terminal] = {}

    def get(self, terminal_id: str) -> Terminal:
        term = self._terminals.get(terminal_id)
        if term is None:
            raise sdk.RequestError.invalid_params({"details": f"no terminal {terminal_id!r}"})
        return term

    async def new(
        self,
        command: str,
        args: list[str],
        env: Mapping[str, str],
        cwd: str | None,
        limit: int | None,
    ) -> str:
        where = self.workspace
        if cwd and cwd not in (str(where), os.path.realpath(where)):
            # Not lorch's own folders nor .git/ (a command started there by lorch
            # would look like lorch's own doing).
            if (why := refusal(self.workspace, cwd)) is not None:
                raise sdk.RequestError.invalid_params({"details": f"cwd {cwd}: {why}"})
            try:
                where = agent_path(self.workspace, cwd)
            except PathEscape as e:
                raise sdk.RequestError.invalid_params({"details": f"cwd {cwd}: {e}"}) from None
        proc = await procs.spawn_async(
            self.wrap([command, *args], where),
            cwd=str(where),
            env={**self.env, **env},
            stdin=procs.DEVNULL,
            stderr=procs.STDOUT,
        )
        term = Terminal(proc, min(limit or TERMINAL_OUTPUT_LIMIT, TERMINAL_OUTPUT_LIMIT))
        term.reader = asyncio.get_running_loop().create_task(term.read())
        tid = f"term-{proc.pid}"
        self._terminals[tid] = term
        return tid

    def release(self, terminal_id: str) -> None:
        term = self._terminals.pop(terminal_id, None)
        if term is not None:
            term.kill()

    def kill_all(self) -> None:
        for term in self._terminals.values():
            term.kill()

    def close(self) -> None:
        """Kill every terminal and forget them."""
        self.kill_all()
        self._terminals.clear()
