"""What an ACP port hands the engine: the turn's ``log`` events, heartbeats, its end.

What the agent says on the way (``session/update``) becomes ``log`` events:
message text coalesced into one line per burst, tool calls with
kind/title/status, plans; a permission decision becomes a ``system.permission``
record, in order with them. Everything is cleaned before the ledger sees it
(redacted first, control characters made visible, then cut to size, never
leaving the beginning of a secret at a cut) and posted to the engine's inbox in
bursts: waking the engine's thread costs more than a line. A turn records at
most ``max_records`` lines; past that, ``on_limit`` is told once and the turn
records nothing more.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorch.agents.acp.events import log_event
from lorch.agents.acp.policy import Decision, agent_path
from lorch.agents.transport import Inbox, Incoming, Launch, TurnCheckpoint
from lorch.wire import protocol
from lorch.wire.errors import LineTooLong, PathEscape
from lorch.wire.protocol import Record
from lorch.wire.textsafe import visible

TEXT_LIMIT = 4000  # characters of agent text per string of a ledger record
LIST_LIMIT = 100  # items of a list (paths, artifacts are lorch's own and few)
REASON_LIMIT = 500  # characters of a failed tool call's own error text
MAX_RECORDS = 10_000  # lines one turn may record ($.agents.ROLE.max_updates_per_turn)
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
        self,
        launch: Launch,
        inbox: Inbox,
        loop: asyncio.AbstractEventLoop,
        workspace: Path,
        *,
        max_records: int = MAX_RECORDS,
        on_limit: Callable[[str], None] | None = None,
    ) -> None:
        self.launch = launch
        self.redactor = launch.redactor
        self.max_records = max_records
        self.on_limit = on_limit
        self.inbox = inbox
        self.loop = loop
        self.workspace = workspace
        self.role = launch.role
        self.generation = launch.generation
        self.agent_id = f"{launch.role}#{launch.generation}"
        self.command: Record | None = None  # what the lines of the turn are recorded for
        self._text: list[str] = []
        self._text_len = 0
        self._records = 0  # lines recorded in this turn
        self._tools: dict[str, tuple[str, str]] = {}
        self._held: list[Incoming] = []
        self._post_due = False
        self._beat_at = 0.0

    def start_turn(self) -> None:
        self._text.clear()
        self._text_len = 0
        self._records = 0
        self._tools.clear()

    @property
    def capped(self) -> bool:
        """Has this turn used up its lines (nothing more is recorded)?"""
        return self._records > self.max_records

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
        limit = self.launch.line_limit
        try:
            size = len(protocol.encode(message, limit))
        except LineTooLong as e:
            # A turn's end can outgrow the line limit (thousands of changed files): the
            # attempt fails as a protocol error, as an NDJSON agent's line would.
            reason = (
                f"agent {self.role}: its {message.get('event')} event would be {e.size} bytes, "
                f"over the {limit}-byte line limit ($.policy.message_max_bytes)"
            )
            error = LineTooLong(reason, size=e.size, prefix=e.prefix)
            self.hold(
                Incoming(self.role, self.generation, "error", error=error, raw_size=e.size), now
            )
            return
        self.hold(
            Incoming(
                self.role,
                self.generation,
                "event",
                message=message,
                raw_size=size,
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
        """What the agent said, fit for the ledger and a terminal: redacted, control
        characters made visible (an escape sequence must not reach the user's
        terminal), cut to size."""
        if isinstance(value, str):
            return self.shown(value, TEXT_LIMIT)
        if isinstance(value, dict):
            # Artifacts are lorch's own (paths it listed, hashes it computed): whole.
            return {k: v if k == "artifacts" else self.clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.clean(v) for v in value[:LIST_LIMIT]]
        return value

    def shown(self, text: str, limit: int) -> str:
        """``text`` redacted, then made visible, then cut to ``limit`` characters
        (a cut never ends with the beginning of a secret)."""
        text = visible(self.redactor.text(text))
        if len(text) <= limit:
            return text
        return self.redactor.cut(text, limit) + "…"

    # -- what the agent says ----------------------------------------------------------

    def say(self, message: str, **payload: Any) -> None:
        """A line of this turn for the ledger and the live transcript (after its text so far)."""
        self.flush_text()
        self._say(message, **payload)

    def _say(self, message: str, **payload: Any) -> None:
        if self.command is not None and self._count():
            self.post(log_event(self.command, self.agent_id, message, **payload))

    def _count(self) -> bool:
        """May one more line of this turn be recorded? The first one past
        ``max_records`` tells ``on_limit`` (once) and none is recorded."""
        if self.command is None or self.capped:
            return False
        self._records += 1
        if not self.capped:
            return True
        self._text.clear()
        self._text_len = 0
        if self.on_limit is not None:
            self.on_limit(
                f"agent {self.role} sent more than {self.max_records} session updates in one "
                f"turn (the limit $.agents.{self.role}.max_updates_per_turn)"
            )
        return False

    def flush_text(self, *, final: bool = True) -> None:
        """Record the message text so far as one line.

        Redacted as a whole before any cut. ``final=False`` (the text goes on):
        a trailing piece that may be the beginning of a secret stays for the
        next line, so the secret is seen whole there.
        """
        if not self._text:
            return
        text = self.redactor.text("".join(self._text))
        self._text.clear()
        self._text_len = 0
        keep = 0 if final else self.redactor.secret_start(text)
        if keep:
            self._text.append(text[len(text) - keep :])
            self._text_len = keep
            text = text[: len(text) - keep]
        text = text.strip()
        if text:
            self._say(self.shown(text, TEXT_LIMIT), acp="agent_message")

    def on_update(self, update: Any) -> None:
        kind = getattr(update, "session_update", "")
        if self.capped:
            return
        if kind == "agent_message_chunk":
            text = getattr(update.content, "text", None)
            if isinstance(text, str):
                self._text.append(text)
                self._text_len += len(text)
                if self._text_len >= TEXT_LIMIT:
                    self.flush_text(final=False)
            return
        if kind in _LOG_ONLY:
            return
        self.flush_text()
        if kind == "tool_call":
            tid, title = update.tool_call_id, update.title
            tkind = str(update.kind or "other")
            self._tools[tid] = (tkind, title)
            self._tool_line(tid, tkind, title, str(update.status or "pending"), update)
        elif kind == "tool_call_update":
            status = update.status
            if status in ("completed", "failed"):
                tkind, title = self._tools.get(
                    update.tool_call_id, (str(update.kind or "other"), update.title or "?")
                )
                self._tool_line(update.tool_call_id, tkind, update.title or title, status, update)
        elif kind == "plan":
            entries = getattr(update, "entries", None) or []
            shown = "; ".join(f"[{e.status}] {e.content}" for e in entries)
            self.say(f"plan: {shown}", acp="plan", entries=len(entries))

    def _tool_line(self, tid: str, tkind: str, title: str, status: str, update: Any) -> None:
        """A tool call's line; a failed one says why, in the tool's own words."""
        extra: dict[str, Any] = {}
        line = f"tool {tkind}: {title} [{status}]"
        if status == "failed":
            reason = tool_error(update)
            if reason:
                # One line: redacted, control characters visible, cut (in that order).
                extra["error"] = self.shown(" ".join(reason.split()), REASON_LIMIT)
                line += f": {extra['error']}"
        self.say(
            line,
            acp="tool_call",
            tool_call_id=tid,
            kind=tkind,
            title=title,
            status=status,
            **extra,
        )

    def decided(self, request: str, title: str, decision: Decision) -> None:
        """A permission decision: a ``system.permission`` record (the engine writes it),
        in order with the turn's lines, so the transcript shows it where it was made."""
        self.flush_text()
        if not self._count():
            return
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


def tool_error(update: Any) -> str:
    """A failed tool call's own error text: its text content, else its ``rawOutput``."""
    parts = []
    for item in getattr(update, "content", None) or []:
        text = getattr(getattr(item, "content", None), "text", None)
        if isinstance(text, str) and text.strip():
            parts.append(text.strip())
    if parts:
        return " ".join(parts)
    raw = getattr(update, "raw_output", None)
    if isinstance(raw, dict):
        for key in ("error", "message", "stderr", "output"):
            value = raw.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, str) and value.strip():
                return value.strip()
    if isinstance(raw, str):
        return raw.strip()
    if raw is None or raw == {} or raw == []:
        return ""
    try:
        return json.dumps(raw, ensure_ascii=False)
    except (TypeError, ValueError):
        return ""
