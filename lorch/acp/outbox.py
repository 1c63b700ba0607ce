"""What an ACP port hands the engine: the turn's ``log`` events, heartbeats, its end.

What the agent says on the way (``session/update``) becomes ``log`` events:
message text coalesced into one line per burst, tool calls with
kind/title/status, plans; a permission decision becomes a ``system.permission``
record, in order with them. Everything is cleaned before the ledger sees it
(redacted, no control characters, cut to size) and posted to the engine's
inbox in bursts: waking the engine's thread costs more than a line.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from pathlib import Path
from typing import Any

from lorch import protocol
from lorch.acp.events import log_event
from lorch.acp.policy import Decision, agent_path
from lorch.errors import PathEscape
from lorch.protocol import Record
from lorch.transport import Inbox, Incoming, Launch, TurnCheckpoint

TEXT_LIMIT = 4000  # characters of agent text per string of a ledger record
LIST_LIMIT = 100  # items of a list (paths, artifacts are lorch's own and few)
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f\x9b]")
HEARTBEAT_EVERY_S = 0.5
POST_EVERY_S = 0.02
# Updates that go to the agent's log only.
_LOG_ONLY = (
    "agent_thought_chunk",
    "user_message_chunk",
    "usage_update",
    "available_commands_update",
    "current_mode_update",
    "config_option_update",
    "session_info_update",
)


class Outbox:
    """The items of one agent (``launch``) for the engine's ``inbox``, posted from ``loop``."""

    def __init__(
        self, launch: Launch, inbox: Inbox, loop: asyncio.AbstractEventLoop, workspace: Path
    ) -> None:
        self.launch = launch
        self.inbox = inbox
        self.loop = loop
        self.workspace = workspace
        self.role = launch.role
        self.generation = launch.generation
        self.agent_id = f"{launch.role}#{launch.generation}"
        self.command: Record | None = None  # what the lines of the turn are recorded for
        self._text: list[str] = []
        self._tools: dict[str, tuple[str, str]] = {}
        self._held: list[Incoming] = []
        self._post_due = False
        self._beat_at = 0.0

    def start_turn(self) -> None:
        self._text.clear()
        self._tools.clear()

    # -- posting -------------------------------------------------------------------

    def post(
        self, message: Record, *, now: bool = False, checkpoint: TurnCheckpoint | None = None
    ) -> None:
        """Hand an event to the engine; lines of a turn go in bursts, its end at once.

        Waking the engine's thread costs more than the line itself, so what a
        turn says waits up to ``POST_EVERY_S`` for company (never past the
        terminal event, which flushes what is held first).
        """
        message = self.clean(message)
        self.hold(
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

    def hold(self, item: Incoming, now: bool = False) -> None:
        self._held.append(item)
        if now:
            self.post_held()
        elif not self._post_due:
            self._post_due = True
            self.loop.call_later(POST_EVERY_S, self.post_held)

    def post_held(self) -> None:
        self._post_due = False
        held, self._held = self._held, []
        if held:
            self.inbox.post_many(held)

    def beat(self) -> None:
        now = time.monotonic()
        if now - self._beat_at >= HEARTBEAT_EVERY_S:
            self._beat_at = now
            self.inbox.post(Incoming(self.role, self.generation, "heartbeat"))

    def clean(self, value: Any) -> Any:
        """What the agent said, fit for the ledger and a terminal: redacted, no control
        characters (an escape sequence must not reach the user's terminal), cut to size."""
        if isinstance(value, str):
            text = _CONTROL.sub("?", self.launch.redactor.text(value))
            return text if len(text) <= TEXT_LIMIT else text[:TEXT_LIMIT] + "…"
        if isinstance(value, dict):
            # Artifacts are lorch's own (paths it listed, hashes it computed): whole.
            return {k: v if k == "artifacts" else self.clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.clean(v) for v in value[:LIST_LIMIT]]
        return value

    # -- what the agent says ----------------------------------------------------------

    def say(self, message: str, **payload: Any) -> None:
        """A line of this turn for the ledger and the live transcript (after its text so far)."""
        self.flush_text()
        self._say(message, **payload)

    def _say(self, message: str, **payload: Any) -> None:
        if self.command is not None:
            self.post(log_event(self.command, self.agent_id, message, **payload))

    def flush_text(self) -> None:
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
                    self.flush_text()
            return
        if kind in _LOG_ONLY:
            return
        self.flush_text()
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

    def decided(self, request: str, title: str, decision: Decision) -> None:
        """A permission decision: a ``system.permission`` record (the engine writes it),
        in order with the turn's lines, so the transcript shows it where it was made."""
        self.flush_text()
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
        record = {"event": "system.permission", "payload": self.clean(payload)}
        self.hold(Incoming(self.role, self.generation, "permission", message=record))

    def _shown_path(self, path: str) -> str:
        """A path as the transcript shows it: relative when inside the workspace."""
        try:
            return (
                agent_path(self.workspace, path)
                .relative_to(os.path.realpath(self.workspace))
                .as_posix()
            )
        except (PathEscape, ValueError):
            return path
