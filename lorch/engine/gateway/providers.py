"""What the gateway knows of each provider's HTTP API: which requests are model
calls, which model they name, how the answer reports its usage, how an error looks.

Three providers:

- ``anthropic``: the Messages API, ``POST /v1/messages`` (streamed: ``message_start``
  carries ``usage``, each ``message_delta`` the cumulative ``usage``; not streamed:
  the message's ``usage``). ``/v1/messages/count_tokens`` and ``/v1/models`` are not
  model calls.
- ``openai``: the Responses API, ``POST …/responses`` (streamed: the ``usage`` of the
  ``response.completed`` / ``response.incomplete`` / ``response.failed`` event) and
  Chat Completions, ``POST …/chat/completions`` (the ``usage`` of the chunk that
  carries it, then ``data: [DONE]``).
- ``gemini``: ``POST /v1beta/models/MODEL:generateContent`` and
  ``:streamGenerateContent`` (``usageMetadata``; the last one seen wins, the model is
  in the path). ``:countTokens`` and the model list are not model calls.

Usage is read as the provider reports it, field for field; the four figures every
record carries (input, output, cache read, cache write) are the provider's own,
so their meaning follows the provider (Anthropic's ``input_tokens`` excludes the
cached part, OpenAI's and Gemini's include it). The provider's whole usage object
is kept beside them.

Everything here reads bytes the upstream sent and nothing here raises on them:
a stream that is not what the provider documents meters as no usage.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

PROVIDERS = ("anthropic", "openai", "gemini")

DEFAULT_UPSTREAM = {
    "anthropic": "https://api.anthropic.com",
    "openai": "https://api.openai.com",
    "gemini": "https://generativelanguage.googleapis.com",
}

# The path an agent's base-URL setting puts in front of the API's own paths.
BASE_PATH = {"anthropic": "", "openai": "/v1", "gemini": ""}

_GEMINI_CALL = re.compile(
    r"^/v1(?:beta|alpha)?\d*/models/([^/:]+):(generateContent|streamGenerateContent)$"
)

# An SSE line or a non-streamed body longer than this is not metered (the stream
# still passes through whole): the gateway never holds an unbounded buffer.
MAX_EVENT = 16 * 1024 * 1024


# An event is decoded only when it holds one of these (a cheap test of the bytes).
_MARKERS = {
    "anthropic": (b"message_start", b"message_delta", b"message_stop", b"error"),
    "openai": (b"usage", b"response.completed", b"response.incomplete", b"response.failed",
               b"error"),
    "gemini": (b"usageMetadata", b"finishReason", b"modelVersion", b"error"),
}  # fmt: skip


@dataclass(frozen=True)
class Call:
    """What a request is: a model call or not, the model it names, whether it streams."""

    model_call: bool
    model: str | None = None
    stream: bool = False


def classify(provider: str, method: str, path: str, body: Any) -> Call:
    """What ``method path`` with the decoded JSON ``body`` (None: not JSON) is."""
    if method != "POST":
        return Call(False)
    obj = body if isinstance(body, dict) else {}
    named = obj.get("model")
    model = named if isinstance(named, str) else None
    streams = obj.get("stream") is True
    if provider == "anthropic":
        if path == "/v1/messages":
            return Call(True, model, streams)
        return Call(False, model)
    if provider == "openai":
        if path.endswith(("/responses", "/chat/completions")):
            return Call(True, model, streams)
        return Call(False, model)
    match = _GEMINI_CALL.match(path)
    if match is None:
        return Call(False)
    return Call(True, match.group(1), match.group(2) == "streamGenerateContent")


def _count(obj: Any, *keys: str) -> int | None:
    """The non-negative integer at ``obj[k1][k2]…``; None when absent or not one."""
    for key in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    if isinstance(obj, bool) or not isinstance(obj, int) or obj < 0:
        return None
    return obj


def _numbers(obj: Any, depth: int = 0) -> Any:
    """The integers of a usage object (nested objects kept, anything else dropped)."""
    if not isinstance(obj, dict) or depth > 3:
        return {}
    out: dict[str, Any] = {}
    for key, value in list(obj.items())[:64]:
        if isinstance(value, bool):
            continue
        if isinstance(value, int | float):
            out[str(key)[:100]] = value
        elif isinstance(value, dict):
            out[str(key)[:100]] = _numbers(value, depth + 1)
    return out


@dataclass
class Usage:
    """The usage a response reported (None: the provider did not say)."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    raw: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "cache_read_tokens": self.cache_read_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "raw": self.raw,
        }


class Meter:
    """Reads a response as it passes, for its usage, model and end.

    ``feed`` each chunk as it arrives; ``terminal`` turns true once the event
    that ends the answer (``message_stop``, ``response.completed``, ``[DONE]``, a
    Gemini candidate with a ``finishReason``, an ``error`` event) has been seen
    whole. A body that is not an event stream is read at ``finish``.
    """

    def __init__(self, provider: str, *, event_stream: bool) -> None:
        self.provider = provider
        self.event_stream = event_stream
        self.usage = Usage()
        self.model: str | None = None
        self.terminal = False
        self.overflow = False
        self._line = bytearray()
        self._data: list[bytes] = []
        self._data_size = 0
        self._body = bytearray()

    def feed(self, chunk: bytes) -> None:
        if not self.event_stream:
            if not self.overflow:
                self._body += chunk
                if len(self._body) > MAX_EVENT:
                    self.overflow = True
                    self._body = bytearray()
            return
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                self._partial(chunk[start:])
                return
            self._partial(chunk[start:end])
            line = bytes(self._line).rstrip(b"\r")
            self._line = bytearray()
            self._on_line(line)
            start = end + 1

    def finish(self) -> Usage:
        """The usage, once the whole response has been fed."""
        if self.event_stream:
            if self._line:
                self._on_line(bytes(self._line).rstrip(b"\r"))
                self._line = bytearray()
            self._dispatch()
        elif self._body and not self.overflow:
            try:
                body = json.loads(bytes(self._body))
            except (ValueError, UnicodeDecodeError, RecursionError):
                body = None
            for item in body if isinstance(body, list) else [body]:
                self._on_object(item, whole=True)
        return self.usage

    def _partial(self, piece: bytes) -> None:
        if len(self._line) + len(piece) > MAX_EVENT:
            self.overflow = True
            self._line = bytearray()
            return
        self._line += piece

    def _on_line(self, line: bytes) -> None:
        if not line:
            self._dispatch()
        elif line.startswith(b"data:"):
            value = line[5:]
            data = value[1:] if value.startswith(b" ") else value
            self._data_size += len(data)
            if self._data_size > MAX_EVENT:
                self.overflow = True
                self._data = []
            elif not self.overflow:
                self._data.append(data)

    def _dispatch(self) -> None:
        if not self._data:
            self._data_size = 0
            self.overflow = False
            return
        data = b"\n".join(self._data)
        self._data, self._data_size, self.overflow = [], 0, False
        if data.strip() == b"[DONE]":
            self.terminal = True
            return
        if not any(marker in data for marker in _MARKERS[self.provider]):
            return  # a delta: most of a stream, and nothing the meter reads
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return
        self._on_object(obj, whole=False)

    def _on_object(self, obj: Any, *, whole: bool) -> None:
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if self.provider == "anthropic":
            self._anthropic(obj, kind)
        elif self.provider == "openai":
            self._openai(obj, kind, whole=whole)
        else:
            self._gemini(obj)

    def _set_model(self, value: Any) -> None:
        if isinstance(value, str) and value:
            self.model = value[:200]

    def _anthropic(self, obj: dict[str, Any], kind: Any) -> None:
        if kind == "message_start":
            message = obj.get("message")
            if isinstance(message, dict):
                self._set_model(message.get("model"))
                self._anthropic_usage(message.get("usage"))
        elif kind == "message_delta":
            self._anthropic_usage(obj.get("usage"))
        elif kind in ("message_stop", "error"):
            self.terminal = True
        elif kind == "message":  # a whole, non-streamed answer
            self._set_model(obj.get("model"))
            self._anthropic_usage(obj.get("usage"))

    def _anthropic_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        # message_delta's counts are cumulative: a field it carries replaces the last.
        u = self.usage
        u.raw.update(_numbers(usage))
        for attr, key in (
            ("input_tokens", "input_tokens"),
            ("output_tokens", "output_tokens"),
            ("cache_read_tokens", "cache_read_input_tokens"),
            ("cache_write_tokens", "cache_creation_input_tokens"),
        ):
            value = _count(usage, key)
            if value is not None:
                setattr(u, attr, value)

    def _openai(self, obj: dict[str, Any], kind: Any, *, whole: bool) -> None:
        if kind in ("response.completed", "response.incomplete", "response.failed"):
            self.terminal = True
            response = obj.get("response")
            if isinstance(response, dict):
                self._set_model(response.get("model"))
                self._openai_usage(response.get("usage"))
            return
        if kind == "error":
            self.terminal = True
            return
        # A whole Responses object, a chat completion, or a chat chunk with usage.
        self._set_model(obj.get("model"))
        self._openai_usage(obj.get("usage"))

    def _openai_usage(self, usage: Any) -> None:
        if not isinstance(usage, dict):
            return
        u = self.usage
        u.raw = _numbers(usage)
        if "prompt_tokens" in usage:  # chat completions
            u.input_tokens = _count(usage, "prompt_tokens")
            u.output_tokens = _count(usage, "completion_tokens")
            u.cache_read_tokens = _count(usage, "prompt_tokens_details", "cached_tokens")
        else:
            u.input_tokens = _count(usage, "input_tokens")
            u.output_tokens = _count(usage, "output_tokens")
            u.cache_read_tokens = _count(usage, "input_tokens_details", "cached_tokens")

    def _gemini(self, obj: dict[str, Any]) -> None:
        self._set_model(obj.get("modelVersion"))
        usage = obj.get("usageMetadata")
        if isinstance(usage, dict):
            u = self.usage
            u.raw = _numbers(usage)
            u.input_tokens = _count(usage, "promptTokenCount")
            u.output_tokens = _count(usage, "candidatesTokenCount")
            u.cache_read_tokens = _count(usage, "cachedContentTokenCount")
        candidates = obj.get("candidates")
        if isinstance(candidates, list) and any(
            isinstance(c, dict) and c.get("finishReason") for c in candidates
        ):
            self.terminal = True
        if "error" in obj:
            self.terminal = True


def error_body(provider: str, status: int, message: str) -> dict[str, Any]:
    """An error as the provider's API words one, so the agent shows ``message``."""
    if provider == "anthropic":
        kind = {
            400: "invalid_request_error",
            404: "not_found_error",
            413: "request_too_large",
            429: "rate_limit_error",
        }.get(status, "api_error")
        return {"type": "error", "error": {"type": kind, "message": message}}
    if provider == "openai":
        kind = "invalid_request_error" if status < 500 else "server_error"
        return {"error": {"message": message, "type": kind, "param": None, "code": None}}
    names = {
        400: "INVALID_ARGUMENT",
        404: "NOT_FOUND",
        408: "DEADLINE_EXCEEDED",
        413: "INVALID_ARGUMENT",
        429: "RESOURCE_EXHAUSTED",
        502: "UNAVAILABLE",
    }
    return {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}
