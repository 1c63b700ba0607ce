"""The Gemini API's side of the scripted endpoint: reading a request, streaming an answer.

Gemini CLI (``GOOGLE_GEMINI_BASE_URL``) calls
``POST /v1beta/models/MODEL:streamGenerateContent?alt=sse`` for its main loop and
``POST /v1beta/models/MODEL:generateContent`` for side queries (the router that
picks a model when the model is ``auto``). A request is read into the same
:class:`~lorch.testing.model_script.Conversation` a Messages request becomes, so
one script format serves both APIs: a ``model`` content is an assistant message,
a ``functionCall`` part a ``tool_use`` block, a ``functionResponse`` part a
``tool_result`` (an error when its response holds ``error``), and consecutive
contents of one role are one message (the CLI sends its session context and the
prompt as two user contents). A reply's ``tool_use`` block is answered as a
``functionCall`` part.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from lorch.testing.model_script import Conversation

# /v1beta/models/gemini-2.5-pro:streamGenerateContent → ("gemini-2.5-pro", "streamGenerateContent")
PATH = re.compile(r"^/v1(?:beta|alpha)?/models/([^/:]+):(generateContent|streamGenerateContent)$")
TEXT_CHUNK = 24


def route(path: str) -> tuple[str, bool] | None:
    """The model and whether it streams, for a generateContent path; None for any other."""
    match = PATH.match(path)
    if match is None:
        return None
    return match.group(1), match.group(2) == "streamGenerateContent"


def _text(parts: object) -> str:
    if not isinstance(parts, list):
        return ""
    return "\n".join(
        p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)
    )


def conversation(body: dict[str, Any]) -> Conversation:
    """The request as a Messages-shaped conversation (see the module docstring)."""
    messages: list[dict[str, Any]] = []
    calls = 0
    pending: list[str] = []  # ids of the calls not answered yet, in order
    raw = body.get("contents")
    for content in raw if isinstance(raw, list) else []:
        if not isinstance(content, dict):
            continue
        role = "assistant" if content.get("role") == "model" else "user"
        blocks: list[dict[str, Any]] = []
        parts = content.get("parts")
        for part in parts if isinstance(parts, list) else []:
            if not isinstance(part, dict):
                continue
            if isinstance(part.get("text"), str) and not part.get("thought"):
                blocks.append({"type": "text", "text": part["text"]})
            elif isinstance(part.get("functionCall"), dict):
                calls += 1
                call_id = f"call-{calls}"
                pending.append(call_id)
                call = part["functionCall"]
                blocks.append(
                    {
                        "type": "tool_use",
                        "id": call_id,
                        "name": str(call.get("name")),
                        "input": call.get("args") or {},
                    }
                )
            elif isinstance(part.get("functionResponse"), dict):
                response = part["functionResponse"].get("response")
                blocks.append(
                    {
                        "type": "tool_result",
                        "tool_use_id": pending.pop(0) if pending else "",
                        "content": json.dumps(response),
                        "is_error": isinstance(response, dict) and "error" in response,
                    }
                )
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    system = body.get("systemInstruction")
    return Conversation(
        messages,
        _text(system.get("parts")) if isinstance(system, dict) else "",
        bool(body.get("tools")),
    )


def _part(block: dict[str, Any]) -> dict[str, Any]:
    if block["type"] == "text":
        return {"text": block["text"]}
    return {"functionCall": {"name": block["name"], "args": block["input"]}}


def _response(
    parts: list[dict[str, Any]], model: str, finish: str | None, usage: tuple[int, int]
) -> dict[str, Any]:
    candidate: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
    out: dict[str, Any] = {"candidates": [candidate], "modelVersion": model}
    if finish is not None:
        candidate["finishReason"] = finish
        out["usageMetadata"] = {
            "promptTokenCount": usage[0],
            "candidatesTokenCount": usage[1],
            "totalTokenCount": usage[0] + usage[1],
        }
    return out


def message(blocks: list[dict[str, Any]], model: str, usage: tuple[int, int]) -> dict[str, Any]:
    """The whole answer as one ``GenerateContentResponse``."""
    return _response([_part(b) for b in blocks], model, "STOP", usage)


def events(blocks: list[dict[str, Any]], model: str, usage: tuple[int, int]) -> Iterator[bytes]:
    """The answer as the server-sent events of ``streamGenerateContent?alt=sse``.

    Text comes in small chunks (the client joins them); a function call comes
    whole, as the API sends it; the last event carries the finish reason.
    """
    pieces: list[dict[str, Any]] = []
    for block in blocks:
        if block["type"] == "text":
            text = block["text"]
            pieces += [
                {"text": text[i : i + TEXT_CHUNK]} for i in range(0, max(len(text), 1), TEXT_CHUNK)
            ]
        else:
            pieces.append(_part(block))
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        data = _response([piece], model, "STOP" if last else None, usage)
        yield f"data: {json.dumps(data, separators=(',', ':'))}\r\n\r\n".encode()


def error(status: int, message: str) -> dict[str, Any]:
    names = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}
    return {"error": {"code": status, "message": message, "status": names.get(status, "UNKNOWN")}}
