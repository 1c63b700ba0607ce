"""The OpenAI Responses API's side of the scripted endpoint: reading a request, streaming an answer.

Codex (through its ACP adapter, with a model provider whose ``base_url`` is the
endpoint's ``/v1`` and ``wire_api = "responses"``) calls ``POST /v1/responses``
with ``"stream": true`` for every turn. A request is read into the same
:class:`~lorch.testing.model_script.Conversation` a Messages request becomes, so
one script format serves every API: the ``developer`` / ``system`` messages and
``instructions`` are the system prompt, ``user`` messages user text (Codex sends
its environment context and the prompt as two; consecutive items of one role
are one message), ``assistant`` messages and ``function_call`` /
``custom_tool_call`` items an assistant message with ``tool_use`` blocks, and
``function_call_output`` / ``custom_tool_call_output`` items ``tool_result``
blocks (an error when the output says the command exited with a non-zero code).
A reply's ``tool_use`` block is answered as a ``function_call`` item whose
``arguments`` are the block's input as JSON, or, when the request declares the
tool ``custom`` (freeform, as Codex declares ``apply_patch``), as a
``custom_tool_call`` whose ``input`` is the block's ``input.input`` string;
``reasoning`` items are skipped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

from lorch.testing.model_script import Conversation

PATH = "/v1/responses"
TEXT_CHUNK = 24
# How Codex reports a command's exit status in a function_call_output.
_EXIT = re.compile(r'(?:exited with code|Exit code:|"exit_code":)\s*(-?\d+)')


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        return ""
    return "\n".join(
        c["text"] for c in content if isinstance(c, dict) and isinstance(c.get("text"), str)
    )


def _failed(output: object) -> bool:
    if isinstance(output, dict):
        if output.get("success") is False:
            return True
        output = output.get("content")
    match = _EXIT.search(_text(output))
    return match is not None and int(match.group(1)) != 0


def _arguments(raw: object) -> dict[str, Any]:
    if isinstance(raw, str):
        try:
            parsed = json.loads(raw)
        except json.JSONDecodeError:
            return {"input": raw}
        return parsed if isinstance(parsed, dict) else {"input": parsed}
    return raw if isinstance(raw, dict) else {}


def _blocks(item: dict[str, Any]) -> tuple[str, list[dict[str, Any]]] | None:
    """The role and Messages blocks of one input item; None for an item that says nothing."""
    kind = item.get("type", "message")
    if kind == "message":
        role = item.get("role")
        text = _text(item.get("content"))
        if role in ("system", "developer"):
            return "system", [{"type": "text", "text": text}]
        return ("assistant" if role == "assistant" else "user"), [{"type": "text", "text": text}]
    if kind in ("function_call", "custom_tool_call"):
        raw = item.get("arguments") if kind == "function_call" else item.get("input")
        block = {
            "type": "tool_use",
            "id": str(item.get("call_id")),
            "name": str(item.get("name")),
            "input": _arguments(raw) if kind == "function_call" else {"input": raw},
        }
        return "assistant", [block]
    if kind in ("function_call_output", "custom_tool_call_output"):
        output = item.get("output")
        content = _text(output.get("content") if isinstance(output, dict) else output)
        result = {
            "type": "tool_result",
            "tool_use_id": str(item.get("call_id")),
            "content": content,
            "is_error": _failed(output),
        }
        return "user", [result]
    return None


def conversation(body: dict[str, Any]) -> Conversation:
    """The request as a Messages-shaped conversation (see the module docstring)."""
    messages: list[dict[str, Any]] = []
    system: list[str] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        system.append(instructions)
    raw = body.get("input")
    if isinstance(raw, str):
        raw = [{"type": "message", "role": "user", "content": raw}]
    for item in raw if isinstance(raw, list) else []:
        read = _blocks(item) if isinstance(item, dict) else None
        if read is None:
            continue
        role, blocks = read
        if role == "system":
            system.append(blocks[0]["text"])
        elif messages and messages[-1]["role"] == role:
            messages[-1]["content"].extend(blocks)
        else:
            messages.append({"role": role, "content": blocks})
    return Conversation(messages, "\n".join(system), bool(body.get("tools")))


def custom_tools(body: dict[str, Any]) -> frozenset[str]:
    """The names of the freeform tools the request declares (called with a string)."""
    tools = body.get("tools")
    declared = tools if isinstance(tools, list) else []
    return frozenset(
        str(t.get("name")) for t in declared if isinstance(t, dict) and t.get("type") == "custom"
    )


def _item(block: dict[str, Any], item_id: str, custom: frozenset[str]) -> dict[str, Any]:
    if block["type"] == "text":
        return {
            "type": "message",
            "id": item_id,
            "status": "completed",
            "role": "assistant",
            "content": [{"type": "output_text", "text": block["text"], "annotations": []}],
        }
    if block["name"] in custom:
        raw = block["input"].get("input")
        return {
            "type": "custom_tool_call",
            "id": item_id,
            "status": "completed",
            "call_id": block["id"],
            "name": block["name"],
            "input": raw if isinstance(raw, str) else json.dumps(block["input"]),
        }
    return {
        "type": "function_call",
        "id": item_id,
        "status": "completed",
        "call_id": block["id"],
        "name": block["name"],
        "arguments": json.dumps(block["input"]),
    }


def _usage(usage: tuple[int, int]) -> dict[str, Any]:
    return {
        "input_tokens": usage[0],
        "input_tokens_details": {"cached_tokens": 0},
        "output_tokens": usage[1],
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": usage[0] + usage[1],
    }


def response(
    response_id: str,
    blocks: list[dict[str, Any]],
    model: str,
    usage: tuple[int, int],
    custom: frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """The whole answer as one ``Response`` object (a request without ``stream``)."""
    return {
        "id": response_id,
        "object": "response",
        "status": "completed",
        "model": model,
        "output": [_item(b, f"{response_id}_{i}", custom) for i, b in enumerate(blocks)],
        "usage": _usage(usage),
    }


def _event(data: dict[str, Any]) -> bytes:
    return f"event: {data['type']}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def events(
    response_id: str,
    blocks: list[dict[str, Any]],
    model: str,
    usage: tuple[int, int],
    custom: frozenset[str] = frozenset(),
) -> Iterator[bytes]:
    """The answer as the server-sent events of a streamed ``POST /v1/responses``.

    ``response.created``, then per output item ``response.output_item.added``,
    its text in small ``response.output_text.delta`` chunks, and
    ``response.output_item.done`` with the whole item, then ``response.completed``.
    """
    created = {"id": response_id, "object": "response", "status": "in_progress", "model": model}
    yield _event({"type": "response.created", "response": created})
    for index, block in enumerate(blocks):
        item = _item(block, f"{response_id}_{index}", custom)
        added = {**item, "status": "in_progress"}
        if block["type"] == "text":
            added["content"] = []
        yield _event({"type": "response.output_item.added", "output_index": index, "item": added})
        if block["type"] == "text":
            text = block["text"]
            for i in range(0, len(text), TEXT_CHUNK):
                yield _event(
                    {
                        "type": "response.output_text.delta",
                        "item_id": item["id"],
                        "output_index": index,
                        "content_index": 0,
                        "delta": text[i : i + TEXT_CHUNK],
                    }
                )
        yield _event({"type": "response.output_item.done", "output_index": index, "item": item})
    yield _event(
        {
            "type": "response.completed",
            "response": response(response_id, blocks, model, usage, custom),
        }
    )


def error(status: int, message: str) -> dict[str, Any]:
    kinds = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error"}
    return {
        "error": {
            "message": message,
            "type": kinds.get(status, "server_error"),
            "param": None,
            "code": None,
        }
    }
