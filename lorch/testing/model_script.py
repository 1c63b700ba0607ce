"""Model scripts: which answer the scripted endpoint gives to which Messages request.

Script (JSON)::

    {
      "command_pattern": "ik:[0-9a-f]{64}",      # optional (this is the default)
      "model": "claude-sonnet-4-5",               # optional: the model named in answers
      "steps": [
        {"name": "write",                          # unique; what the log calls it
         "when": {"prompt_contains": "T-0042", "turn": 0},
         "reply": [{"type": "tool_use", "name": "Write",
                    "input": {"file_path": "{cwd}/hello.py", "content": "print(1)\\n"}}]},
        {"name": "done", "when": {"after_tool": "Write"},
         "reply": [{"type": "text", "text": "Wrote hello.py."}]}
      ],
      "fallback": [{"type": "text", "text": "ok"}]  # optional: requests no step matches
    }

``when`` (all given conditions must hold; none = always):
``prompt_contains`` (text of the conversation's first user message),
``contains`` (text of the last user message, tool results included),
``turn`` (how many assistant messages the conversation already has),
``after_tool`` (the last user message carries the result of a call to this tool),
``tool_error`` (that result is / is not an error), ``system_contains`` (the
system prompt), ``has_tools`` (the request offers tools: the agent's main loop,
not a side query). A step may also say ``times`` (answer at most N requests),
``hold`` (hold its first N answers) and ``stop_reason`` (default ``tool_use``
when the reply calls a tool, else ``end_turn``). In reply strings ``{cwd}`` is
the working directory the agent's system prompt (or Gemini CLI's session
context, or Codex's environment context) names and ``{{`` / ``}}`` are
literal braces. A request no step matches gets ``fallback`` when the script has
one, else a 400 error naming the request (the agent sees an API error, the log
says ``unmatched``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import jsonschema

from lorch.wire.errors import LorchError

DEFAULT_COMMAND_PATTERN = r"ik:[0-9a-f]{64}"
DEFAULT_MODEL = "claude-sonnet-4-5"
# Claude Code names its working directory in its system prompt; Gemini CLI lists
# its workspace directories in the session context it sends as the first user text;
# Codex names it in the environment context it sends as the first user text.
_CWD_RE = re.compile(
    r"(?:Primary working directory|Working directory): *(\S[^\n]*)"
    r"|Workspace Directories:\**\n *- *(\S[^\n]*)"
    r"|<cwd>([^<\n]+)</cwd>"
)

_BLOCK = {
    "oneOf": [
        {
            "type": "object",
            "properties": {"type": {"const": "text"}, "text": {"type": "string"}},
            "required": ["type", "text"],
            "additionalProperties": False,
        },
        {
            "type": "object",
            "properties": {
                "type": {"const": "tool_use"},
                "name": {"type": "string", "minLength": 1},
                "input": {"type": "object"},
            },
            "required": ["type", "name", "input"],
            "additionalProperties": False,
        },
    ]
}
_REPLY = {"type": "array", "items": _BLOCK, "minItems": 1}
SCRIPT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "command_pattern": {"type": "string", "minLength": 1},
        "model": {"type": "string", "minLength": 1},
        "steps": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string", "minLength": 1},
                    "when": {
                        "type": "object",
                        "properties": {
                            "prompt_contains": {"type": "string"},
                            "contains": {"type": "string"},
                            "turn": {"type": "integer", "minimum": 0},
                            "after_tool": {"type": "string"},
                            "tool_error": {"type": "boolean"},
                            "system_contains": {"type": "string"},
                            "has_tools": {"type": "boolean"},
                        },
                        "additionalProperties": False,
                    },
                    "reply": _REPLY,
                    "stop_reason": {
                        "enum": ["end_turn", "tool_use", "max_tokens", "stop_sequence"]
                    },
                    "times": {"type": "integer", "minimum": 1},
                    "hold": {"type": "integer", "minimum": 0},
                },
                "required": ["name", "reply"],
                "additionalProperties": False,
            },
        },
        "fallback": _REPLY,
    },
    "required": ["steps"],
    "additionalProperties": False,
}


class ScriptError(LorchError):
    """A model script that cannot be used; the message names the file and the field."""

    exit_code = 2


@dataclass(frozen=True)
class Step:
    name: str
    reply: tuple[dict[str, Any], ...]
    when: dict[str, Any] = field(default_factory=dict)
    stop_reason: str | None = None
    times: int | None = None
    hold: int = 0


@dataclass(frozen=True)
class Script:
    steps: tuple[Step, ...]
    fallback: tuple[dict[str, Any], ...] | None = None
    command_pattern: str = DEFAULT_COMMAND_PATTERN
    model: str = DEFAULT_MODEL

    @classmethod
    def from_dict(cls, data: object, *, source: str = "script") -> Script:
        """Check ``data`` against the script schema and build the script."""
        validator = jsonschema.Draft202012Validator(SCRIPT_SCHEMA)
        error = jsonschema.exceptions.best_match(validator.iter_errors(data))
        if error is not None:
            where = error.json_path
            raise ScriptError(f"{source}: {where}: {error.message}")
        doc = cast(dict[str, Any], data)
        names: set[str] = set()
        steps = []
        for i, raw in enumerate(doc["steps"]):
            if raw["name"] in names:
                raise ScriptError(f"{source}: $.steps[{i}].name: {raw['name']!r} is used twice")
            names.add(raw["name"])
            steps.append(
                Step(
                    name=raw["name"],
                    reply=tuple(raw["reply"]),
                    when=dict(raw.get("when", {})),
                    stop_reason=raw.get("stop_reason"),
                    times=raw.get("times"),
                    hold=raw.get("hold", 0),
                )
            )
        pattern = doc.get("command_pattern", DEFAULT_COMMAND_PATTERN)
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ScriptError(
                f"{source}: $.command_pattern: not a regular expression: {exc}"
            ) from None
        fallback = doc.get("fallback")
        return cls(
            steps=tuple(steps),
            fallback=tuple(fallback) if fallback is not None else None,
            command_pattern=pattern,
            model=doc.get("model", DEFAULT_MODEL),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Script:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ScriptError(f"{path}: cannot read the model script: {exc.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScriptError(f"{path}: line {exc.lineno}: not JSON: {exc.msg}") from None
        return cls.from_dict(data, source=str(path))


# --- reading a Messages request -------------------------------------------------------


def text_of(content: object) -> str:
    """All the text in a message's content: text blocks and tool results alike."""
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, list):
        for block in content:
            if not isinstance(block, dict):
                continue
            if isinstance(block.get("text"), str):
                parts.append(block["text"])
            elif block.get("type") == "tool_result":
                parts.append(text_of(block.get("content")))
    return "\n".join(parts)


@dataclass(frozen=True)
class Conversation:
    messages: list[dict[str, Any]]
    system: str
    has_tools: bool

    @classmethod
    def of(cls, body: dict[str, Any]) -> Conversation:
        raw = body.get("messages")
        messages = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []
        system = body.get("system")
        return cls(messages, text_of(system), bool(body.get("tools")))

    def _users(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("role") == "user"]

    @property
    def prompt(self) -> str:
        users = self._users()
        return text_of(users[0].get("content")) if users else ""

    @property
    def last(self) -> str:
        users = self._users()
        return text_of(users[-1].get("content")) if users else ""

    @property
    def turn(self) -> int:
        return sum(1 for m in self.messages if m.get("role") == "assistant")

    def all_text(self) -> str:
        return "\n".join(text_of(m.get("content")) for m in self.messages)

    def last_tool_result(self) -> tuple[str | None, bool]:
        """The name of the tool whose result ends the conversation, and whether it failed."""
        if not self.messages or self.messages[-1].get("role") != "user":
            return None, False
        content = self.messages[-1].get("content")
        results = [
            b for b in content or [] if isinstance(b, dict) and b.get("type") == "tool_result"
        ]
        if not isinstance(content, list) or not results:
            return None, False
        names: dict[str, str] = {}
        for message in self.messages:
            if message.get("role") == "assistant" and isinstance(message.get("content"), list):
                for block in message["content"]:
                    if isinstance(block, dict) and block.get("type") == "tool_use":
                        names[str(block.get("id"))] = str(block.get("name"))
        last = results[-1]
        return names.get(str(last.get("tool_use_id"))), bool(last.get("is_error"))

    def cwd(self) -> str | None:
        match = _CWD_RE.search(self.system) or _CWD_RE.search(self.all_text())
        return next(g for g in match.groups() if g).strip() if match else None


def matches(when: dict[str, Any], conv: Conversation) -> bool:
    if "prompt_contains" in when and when["prompt_contains"] not in conv.prompt:
        return False
    if "contains" in when and when["contains"] not in conv.last:
        return False
    if "turn" in when and when["turn"] != conv.turn:
        return False
    if "system_contains" in when and when["system_contains"] not in conv.system:
        return False
    if "has_tools" in when and when["has_tools"] != conv.has_tools:
        return False
    if "after_tool" in when or "tool_error" in when:
        tool, failed = conv.last_tool_result()
        if tool is None:
            return False
        if "after_tool" in when and when["after_tool"] != tool:
            return False
        if "tool_error" in when and when["tool_error"] != failed:
            return False
    return True


_TEMPLATE = re.compile(r"\{\{|\}\}|\{cwd\}")


def fill(value: Any, cwd: str | None) -> Any:
    """Replace ``{cwd}`` in every string of a reply (``{{``/``}}`` stay braces)."""
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            token = match.group(0)
            if token != "{cwd}":
                return token[0]
            if cwd is None:
                raise ScriptError("a reply uses {cwd} but the request names no working directory")
            return cwd

        return _TEMPLATE.sub(sub, value)
    if isinstance(value, list):
        return [fill(v, cwd) for v in value]
    if isinstance(value, dict):
        return {k: fill(v, cwd) for k, v in value.items()}
    return value
