"""A scripted model endpoint: the Anthropic Messages API, streaming, on 127.0.0.1.

It lets a real coding agent (Claude Code through its ACP adapter, or anything
that talks to ``ANTHROPIC_BASE_URL``) run offline and deterministically: every
``POST /v1/messages`` is answered by the first step of a script whose conditions
match the request, streamed as the real API streams (``message_start``,
``content_block_start`` / ``content_block_delta`` (``text_delta``,
``input_json_delta``) / ``content_block_stop``, ``message_delta`` with the stop
reason, ``message_stop``), or as one JSON message when the request does not ask
for a stream. ``count_tokens`` and the model list are answered too. Every request
is a record (and a JSON line in the log file): when, what path, which step
answered, which lorch command it belongs to (found in the conversation's text
by ``command_pattern``), so a test can count the requests of each command.

A step can *hold* its answer: it streams the start of the message and then waits
until :meth:`ModelEndpoint.release` or the client goes away. A test waits for
that moment (:meth:`ModelEndpoint.wait_held`) to kill a run mid-turn without
guessing at timing.

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
the working directory the agent's system prompt names and ``{{`` / ``}}`` are
literal braces. A request no step matches gets ``fallback`` when the script has
one, else a 400 error naming the request (the agent sees an API error, the log
says ``unmatched``).

Use it from Python (``with ModelEndpoint(Script.load(path), log=...) as ep:``)
or as ``python -m lorch.testing.model_endpoint SCRIPT [--port N] [--log FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import jsonschema

from lorch.errors import LorchError

DEFAULT_COMMAND_PATTERN = r"ik:[0-9a-f]{64}"
DEFAULT_MODEL = "claude-sonnet-4-5"
MODELS = (
    ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
    ("claude-opus-4-1", "Claude Opus 4.1"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
)
MAX_BODY = 64 * 1024 * 1024
# Chunk sizes of the streamed deltas: small enough that a client must join them.
TEXT_CHUNK = 24
JSON_CHUNK = 40
_CWD_RE = re.compile(r"(?:Primary working directory|Working directory): *(\S[^\n]*)")

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


@dataclass(frozen=True)
class Request:
    """One request the endpoint received, as the log records it."""

    seq: int
    time: str
    method: str
    path: str
    status: int
    step: str | None = None
    command: str | None = None
    turn: int | None = None
    model: str | None = None
    stream: bool = False
    held: bool = False
    note: str = ""


# --- reading a Messages request -------------------------------------------------------


def _text_of(content: object) -> str:
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
                parts.append(_text_of(block.get("content")))
    return "\n".join(parts)


@dataclass(frozen=True)
class _Conversation:
    messages: list[dict[str, Any]]
    system: str
    has_tools: bool

    @classmethod
    def of(cls, body: dict[str, Any]) -> _Conversation:
        raw = body.get("messages")
        messages = [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []
        system = body.get("system")
        return cls(messages, _text_of(system), bool(body.get("tools")))

    def _users(self) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("role") == "user"]

    @property
    def prompt(self) -> str:
        users = self._users()
        return _text_of(users[0].get("content")) if users else ""

    @property
    def last(self) -> str:
        users = self._users()
        return _text_of(users[-1].get("content")) if users else ""

    @property
    def turn(self) -> int:
        return sum(1 for m in self.messages if m.get("role") == "assistant")

    def all_text(self) -> str:
        return "\n".join(_text_of(m.get("content")) for m in self.messages)

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
        return match.group(1).strip() if match else None


def _matches(when: dict[str, Any], conv: _Conversation) -> bool:
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


def _fill(value: Any, cwd: str | None) -> Any:
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
        return [_fill(v, cwd) for v in value]
    if isinstance(value, dict):
        return {k: _fill(v, cwd) for k, v in value.items()}
    return value


def _chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


# --- the endpoint ---------------------------------------------------------------------


class ModelEndpoint:
    """The scripted endpoint, served on a thread; a context manager."""

    def __init__(
        self,
        script: Script,
        *,
        log: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.script = script
        self._pattern = re.compile(script.command_pattern)
        self._log_path = Path(log) if log is not None else None
        self._cond = threading.Condition()
        self._records: list[Request] = []
        self._used: dict[str, int] = {}
        self._holding: list[int] = []  # write ends of the pipes that wake held answers
        self._closed = False
        self._seq = 0  # numbers the records
        self._ids = 0  # numbers message, tool-use and request ids
        self._server = _Server((host, port), _Handler)
        self._server.endpoint = self
        self._thread: threading.Thread | None = None

    # lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ModelEndpoint:
        # A short poll interval: close() (shutdown) waits for the loop to look.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name="model-endpoint",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closed = True
        self.release()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ModelEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # what tests look at

    @property
    def requests(self) -> list[Request]:
        with self._cond:
            return list(self._records)

    def count(self, command: str | None = None, *, step: str | None = None) -> int:
        """How many Messages requests were answered for ``command`` (and by ``step``)."""
        return sum(
            1
            for r in self.requests
            if r.path == "/v1/messages"
            and (command is None or r.command == command)
            and (step is None or r.step == step)
        )

    def wait_for(self, predicate: Callable[[Request], bool], timeout: float) -> Request:
        """The first request satisfying ``predicate``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for record in self._records:
                    if predicate(record):
                        return record
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = ", ".join(f"{r.path}→{r.step}" for r in self._records) or "none"
                    raise TimeoutError(f"no such request within {timeout:g}s (seen: {seen})")
                self._cond.wait(left)

    def wait_held(self, step: str, timeout: float) -> Request:
        """Wait until an answer of ``step`` is being held mid-stream."""
        return self.wait_for(lambda r: r.held and r.step == step, timeout)

    def release(self) -> None:
        """Let every held answer finish streaming."""
        # Written under the lock: a handler closes its pipe only after taking it
        # out of the list, so a descriptor number is never written after reuse.
        with self._cond:
            for fd in self._holding:
                os.write(fd, b"x")
            self._holding = []

    # used by the handler

    def _record(self, request: Request) -> None:
        with self._cond:
            self._records.append(request)
            if self._log_path is not None:
                line = json.dumps(asdict(request), separators=(",", ":"), sort_keys=True)
                with open(self._log_path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
            self._cond.notify_all()

    def _next_seq(self) -> int:
        with self._cond:
            self._seq += 1
            return self._seq

    def _next_id(self) -> int:
        with self._cond:
            self._ids += 1
            return self._ids

    def _choose(self, conv: _Conversation) -> tuple[Step | None, bool]:
        """The step that answers ``conv`` (None: fallback or unmatched), and whether to hold."""
        with self._cond:
            for step in self.script.steps:
                used = self._used.get(step.name, 0)
                if step.times is not None and used >= step.times:
                    continue
                if _matches(step.when, conv):
                    self._used[step.name] = used + 1
                    return step, used < step.hold and not self._closed
        return None, False

    def _hold_pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        with self._cond:
            if self._closed:
                os.write(w, b"x")
            self._holding.append(w)
        return r, w

    def _drop_hold(self, w: int) -> None:
        with self._cond:
            if w in self._holding:
                self._holding.remove(w)

    def _command_of(self, conv: _Conversation) -> str | None:
        match = self._pattern.search(conv.all_text())
        return match.group(0) if match else None

    def _message_id(self) -> str:
        return f"msg_{self._next_id():024d}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: ModelEndpoint


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the endpoint's own log records every request

    @property
    def ep(self) -> ModelEndpoint:
        return self.server.endpoint

    def _now(self) -> str:
        return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_{self.ep._next_id():020d}")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, kind: str, message: str) -> None:
        self._send_json(status, {"type": "error", "error": {"type": kind, "message": message}})

    def _body(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            return None
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    def _plain(self, status: int, note: str = "") -> Request:
        return Request(
            seq=self.ep._next_seq(),
            time=self._now(),
            method=self.command,
            path=self.path,
            status=status,
            note=note,
        )

    # stray traffic: an agent told to use this endpoint as its proxy shows where else it goes

    def _stray(self) -> bool:
        """Refuse (and log) a request meant for another host; False if it is ours."""
        if self.command != "CONNECT" and not self.path.startswith(("http://", "https://")):
            return False
        self.ep._record(self._plain(403, f"stray {self.command} {self.path}"))
        self._error(403, "permission_error", "offline: only the model endpoint is reachable")
        self.close_connection = True
        return True

    def do_CONNECT(self) -> None:
        self._stray()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if self._stray():
            return
        if path == "/v1/models":
            data = [self._model(mid, name) for mid, name in MODELS]
            self.ep._record(self._plain(200))
            self._send_json(
                200,
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"],
                    "last_id": data[-1]["id"],
                },
            )
            return
        if path.startswith("/v1/models/"):
            mid = path.removeprefix("/v1/models/")
            names = dict(MODELS)
            self.ep._record(self._plain(200))
            self._send_json(200, self._model(mid, names.get(mid, mid)))
            return
        self.ep._record(self._plain(404, "unknown path"))
        self._error(404, "not_found_error", f"the scripted endpoint does not serve {path}")

    @staticmethod
    def _model(mid: str, name: str) -> dict[str, Any]:
        return {
            "type": "model",
            "id": mid,
            "display_name": name,
            "created_at": "2025-01-01T00:00:00Z",
        }

    def do_HEAD(self) -> None:
        self.ep._record(self._plain(200))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if self._stray():
            return
        body = self._body()
        if body is None:
            self.ep._record(self._plain(400, "body is not a JSON object"))
            self._error(400, "invalid_request_error", "the body is not a JSON object")
            return
        if path == "/v1/messages/count_tokens":
            self.ep._record(self._plain(200))
            self._send_json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
            return
        if path != "/v1/messages":
            self.ep._record(self._plain(404, "unknown path"))
            self._error(404, "not_found_error", f"the scripted endpoint does not serve {path}")
            return
        self._messages(body)

    def _messages(self, body: dict[str, Any]) -> None:
        ep = self.ep
        conv = _Conversation.of(body)
        stream = body.get("stream") is True
        raw_model = body.get("model")
        model = raw_model if isinstance(raw_model, str) else ep.script.model
        step, hold = ep._choose(conv)
        base = Request(
            seq=ep._next_seq(),
            time=self._now(),
            method="POST",
            path="/v1/messages",
            status=200,
            command=ep._command_of(conv),
            turn=conv.turn,
            model=model,
            stream=stream,
        )
        if step is not None:
            reply, stop, name = step.reply, step.stop_reason, step.name
        elif ep.script.fallback is not None:
            reply, stop, name = ep.script.fallback, None, "fallback"
        else:
            ep._record(replace(base, status=400, step="unmatched", note=conv.last[:200]))
            self._error(400, "invalid_request_error", "no step of the model script matches")
            return
        try:
            blocks = [cast(dict[str, Any], _fill(b, conv.cwd())) for b in reply]
        except ScriptError as exc:
            ep._record(replace(base, status=400, step=name, note=str(exc)))
            self._error(400, "invalid_request_error", str(exc))
            return
        for block in blocks:
            if block["type"] == "tool_use":
                block["id"] = f"toolu_{ep._next_id():020d}"
        if stop is None:
            stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        usage_in = max(1, len(json.dumps(body)) // 4)
        usage_out = max(1, len(json.dumps(blocks)) // 4)
        message_id = ep._message_id()
        if not stream:
            ep._record(replace(base, step=name))
            self._send_json(
                200,
                {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": blocks,
                    "stop_reason": stop,
                    "stop_sequence": None,
                    "usage": {"input_tokens": usage_in, "output_tokens": usage_out},
                },
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", f"req_{ep._next_id():020d}")
        self.end_headers()
        events = self._events(message_id, model, blocks, stop, usage_in, usage_out)
        if hold:
            # Stream the start of the message, then stall: the agent is mid-turn.
            self._chunk(next(events) + next(events) + next(events))
            if not self._hold(replace(base, step=name, held=True)):
                return
        else:
            ep._record(replace(base, step=name))
        try:
            for event in events:
                self._chunk(event)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _hold(self, record: Request) -> bool:
        """Hold the answer until released; False if the client went away meanwhile."""
        r, w = self.ep._hold_pipe()
        self.ep._record(record)
        try:
            while True:
                ready, _, _ = select.select([self.connection, r], [], [])
                if r in ready:
                    return True
                try:
                    peek = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    peek = b""
                if not peek:
                    self.close_connection = True
                    return False
        finally:
            self.ep._drop_hold(w)
            os.close(r)
            os.close(w)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    @staticmethod
    def _events(
        message_id: str,
        model: str,
        blocks: list[dict[str, Any]],
        stop: str,
        usage_in: int,
        usage_out: int,
    ) -> Iterator[bytes]:
        yield _sse(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": message_id,
                    "type": "message",
                    "role": "assistant",
                    "model": model,
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": {"input_tokens": usage_in, "output_tokens": 1},
                },
            },
        )
        for index, block in enumerate(blocks):
            start: dict[str, Any]
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
                deltas = [
                    {"type": "text_delta", "text": t} for t in _chunks(block["text"], TEXT_CHUNK)
                ]
            else:
                start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
                payload = json.dumps(block["input"], separators=(",", ":"))
                deltas = [
                    {"type": "input_json_delta", "partial_json": p}
                    for p in _chunks(payload, JSON_CHUNK)
                ]
            yield _sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": start},
            )
            if index == 0:
                yield _sse("ping", {"type": "ping"})
            for delta in deltas:
                yield _sse(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": index, "delta": delta},
                )
            yield _sse("content_block_stop", {"type": "content_block_stop", "index": index})
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": usage_out},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lorch.testing.model_endpoint",
        description="Serve a scripted Anthropic Messages endpoint on 127.0.0.1.",
    )
    parser.add_argument("script", help="the model script (JSON)")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    parser.add_argument("--log", help="append one JSON line per request to this file")
    args = parser.parse_args(argv)
    try:
        script = Script.load(args.script)
    except ScriptError as exc:
        print(f"model endpoint: {exc}", file=sys.stderr)
        return exc.exit_code
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ModelEndpoint(script, log=args.log, port=args.port) as endpoint:
        print(endpoint.url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
