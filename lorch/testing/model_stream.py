"""How the Messages API streams an answer: server-sent events, chunked deltas."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

# Chunk sizes of the streamed deltas: small enough that a client must join them.
TEXT_CHUNK = 24
JSON_CHUNK = 40


def chunks(text: str, size: int) -> list[str]:
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def message(
    message_id: str,
    model: str,
    blocks: list[dict[str, Any]],
    stop: str,
    usage_in: int,
    usage_out: int,
) -> dict[str, Any]:
    """The whole answer as one JSON message (a request that does not ask for a stream)."""
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": {"input_tokens": usage_in, "output_tokens": usage_out},
    }


def events(
    message_id: str,
    model: str,
    blocks: list[dict[str, Any]],
    stop: str,
    usage_in: int,
    usage_out: int,
) -> Iterator[bytes]:
    """The answer as the stream of server-sent events the real API sends."""
    yield sse(
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
            deltas = [{"type": "text_delta", "text": t} for t in chunks(block["text"], TEXT_CHUNK)]
        else:
            start = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            payload = json.dumps(block["input"], separators=(",", ":"))
            deltas = [
                {"type": "input_json_delta", "partial_json": p} for p in chunks(payload, JSON_CHUNK)
            ]
        yield sse(
            "content_block_start",
            {"type": "content_block_start", "index": index, "content_block": start},
        )
        if index == 0:
            yield sse("ping", {"type": "ping"})
        for delta in deltas:
            yield sse(
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield sse("content_block_stop", {"type": "content_block_stop", "index": index})
    yield sse(
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": {"output_tokens": usage_out},
        },
    )
    yield sse("message_stop", {"type": "message_stop"})
