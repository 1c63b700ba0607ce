"""A small ACP client on the agent-client-protocol SDK, for driving real agents in tests.

It opens one session in a workspace, sends one prompt, and keeps what the agent
said: every ``session/update`` (as plain JSON), every permission request with
the decision it got, and the prompt's stop reason. Permission requests are
answered the way lorch's default policy answers them: edits inside the
workspace and command execution are allowed once, anything else is refused.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acp import PROTOCOL_VERSION, spawn_agent_process, text_block
from acp.schema import (
    AllowedOutcome,
    ClientCapabilities,
    PermissionOption,
    RequestPermissionResponse,
    ToolCallUpdate,
)


@dataclass
class Decision:
    kind: str | None
    title: str | None
    paths: list[str]
    option: str


@dataclass
class Turn:
    """What one prompt to a real agent came to."""

    agent: dict[str, Any]
    stop_reason: str
    updates: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)

    def tool_calls(self) -> dict[str, dict[str, Any]]:
        """Each tool call's latest state, by id (a call is sent, then updated)."""
        calls: dict[str, dict[str, Any]] = {}
        for update in self.updates:
            if update.get("sessionUpdate") in ("tool_call", "tool_call_update"):
                call = calls.setdefault(update["toolCallId"], {})
                call.update({k: v for k, v in update.items() if v is not None})
        return calls

    def text(self) -> str:
        return "".join(
            u["content"].get("text", "")
            for u in self.updates
            if u.get("sessionUpdate") == "agent_message_chunk"
        )


class _Client:
    def __init__(self, workspace: Path, turn: Turn) -> None:
        self.workspace = workspace.resolve()
        self.turn = turn

    def _inside(self, path: str) -> bool:
        resolved = Path(path).resolve()
        return resolved == self.workspace or self.workspace in resolved.parents

    async def request_permission(
        self, session_id: str, tool_call: ToolCallUpdate, options: list[PermissionOption], **_: Any
    ) -> RequestPermissionResponse:
        paths = [loc.path for loc in tool_call.locations or []]
        kind = tool_call.kind
        allowed = kind == "execute" or (
            kind in ("edit", "delete", "move") and bool(paths) and all(map(self._inside, paths))
        )
        wanted = "allow_once" if allowed else "reject_once"
        option = next((o.option_id for o in options if o.kind == wanted), None)
        if option is None:  # the agent offers no such choice: refuse
            option = next(o.option_id for o in options if o.kind.startswith("reject"))
        self.turn.decisions.append(Decision(kind, tool_call.title, paths, option))
        return RequestPermissionResponse(
            outcome=AllowedOutcome(outcome="selected", option_id=option)
        )

    async def session_update(self, session_id: str, update: Any, **_: Any) -> None:
        self.turn.updates.append(update.model_dump(mode="json", by_alias=True, exclude_none=True))

    def on_connect(self, conn: Any) -> None:
        pass


async def _prompt(
    cmd: list[str], workspace: Path, prompt: str, env: dict[str, str], stderr: Path
) -> Turn:
    turn = Turn(agent={}, stop_reason="")
    with open(stderr, "ab") as err:
        async with spawn_agent_process(
            _Client(workspace, turn),
            cmd[0],
            *cmd[1:],
            env=env,
            cwd=workspace,
            transport_kwargs={"stderr": err.fileno(), "shutdown_timeout": 10.0},
        ) as (conn, _proc):
            init = await conn.initialize(
                protocol_version=PROTOCOL_VERSION, client_capabilities=ClientCapabilities()
            )
            turn.agent = init.model_dump(mode="json", by_alias=True, exclude_none=True)
            session = await conn.new_session(cwd=str(workspace), mcp_servers=[])
            result = await conn.prompt(session_id=session.session_id, prompt=[text_block(prompt)])
            turn.stop_reason = result.stop_reason
    return turn


def prompt_once(
    cmd: list[str], workspace: Path, prompt: str, env: dict[str, str], *, stderr: Path
) -> Turn:
    """Start the agent, prompt it once in ``workspace``, and stop it."""
    os.makedirs(workspace, exist_ok=True)
    return asyncio.run(_prompt(cmd, workspace, prompt, env, stderr))
