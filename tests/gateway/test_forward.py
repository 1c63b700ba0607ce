"""Forwarding and metering: each provider's API through the gateway, against scripted upstreams."""

from __future__ import annotations

import http.client
import json
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from lorch.engine.gateway.server import Gateway
from lorch.testing.model_endpoint import ModelEndpoint
from lorch.testing.model_script import Script
from tests.gateway.http import request
from tests.gateway.upstream import Reply, Upstream, json_reply, sse

KEY = "sk-ant-test-key-0123456789"
TOOL_INPUT = {"file_path": "/w/hello.py", "content": "print('hello')\n" * 4}


@pytest.fixture
def endpoint() -> Iterator[ModelEndpoint]:
    script = Script.from_dict(
        {
            "steps": [
                {
                    "name": "write",
                    "when": {"turn": 0},
                    "reply": [
                        {"type": "text", "text": "I will write the file now, as asked."},
                        {"type": "tool_use", "name": "Write", "input": TOOL_INPUT},
                    ],
                }
            ],
            "fallback": [{"type": "text", "text": "done"}],
        }
    )
    with ModelEndpoint(script) as ep:
        yield ep


def test_anthropic_stream_passes_through_with_tool_calls_and_is_metered(
    endpoint: ModelEndpoint, gateway: Callable[..., Gateway], sdk: Callable[..., Any]
) -> None:
    calls: list[dict[str, Any]] = []
    gw = gateway("anthropic", endpoint.url, on_call=calls.append)
    gw.set_context({"command": "ik:" + "ab" * 32, "attempt": 1})
    messages: Any = [{"role": "user", "content": "write hello.py"}]
    with sdk(gw, KEY).messages.stream(
        model="claude-sonnet-4-5", max_tokens=100, messages=messages
    ) as stream:
        final = stream.get_final_message()
    assert final.content[1].type == "tool_use"
    assert final.content[1].input == TOOL_INPUT
    assert endpoint.count() == 1
    [call] = calls
    assert call["model"] == "claude-sonnet-4-5"
    assert (call["input_tokens"], call["output_tokens"]) == (
        final.usage.input_tokens,
        final.usage.output_tokens,
    )
    assert call["stream"] is True
    assert (call["status"], call["outcome"], call["source"]) == (200, "complete", "upstream")
    assert call["context"] == {"command": "ik:" + "ab" * 32, "attempt": 1}
    assert call["latency_ms"] >= call["first_byte_ms"] >= 0


def test_anthropic_non_streamed_call_is_metered(
    endpoint: ModelEndpoint, gateway: Callable[..., Gateway], sdk: Callable[..., Any]
) -> None:
    calls: list[dict[str, Any]] = []
    gw = gateway("anthropic", endpoint.url, on_call=calls.append)
    message = sdk(gw, KEY).messages.create(
        model="claude-sonnet-4-5", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
    )
    [call] = calls
    assert call["stream"] is False
    assert call["input_tokens"] == message.usage.input_tokens
    assert call["output_tokens"] == message.usage.output_tokens


def test_model_lists_and_token_counts_are_forwarded_but_not_metered(
    endpoint: ModelEndpoint, gateway: Callable[..., Gateway], sdk: Callable[..., Any]
) -> None:
    calls: list[dict[str, Any]] = []
    gw = gateway("anthropic", endpoint.url, on_call=calls.append)
    client = sdk(gw, KEY)
    assert client.models.list().data[0].id == "claude-sonnet-4-5"
    count = client.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "hi"}]
    )
    assert count.input_tokens > 0
    assert [r.path for r in endpoint.requests] == ["/v1/models", "/v1/messages/count_tokens"]
    assert calls == []


def test_anthropic_cache_tokens_come_from_the_providers_fields(
    upstream: Callable[[list[Reply]], Upstream], gateway: Callable[..., Gateway]
) -> None:
    start = {
        "type": "message_start",
        "message": {
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "claude-opus-4-1",
            "content": [],
            "usage": {
                "input_tokens": 7,
                "output_tokens": 1,
                "cache_read_input_tokens": 1200,
                "cache_creation_input_tokens": 300,
            },
        },
    }
    up = upstream(
        [
            Reply(
                [
                    sse(start, "message_start"),
                    sse({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 42}}),
                    sse({"type": "message_stop"}, "message_stop"),
                ]
            )
        ]
    )
    calls: list[dict[str, Any]] = []
    gw = gateway("anthropic", up.url, on_call=calls.append)
    status, _, _ = request(
        gw.url + "/v1/messages", {"model": "claude-opus-4-1", "stream": True, "messages": []}
    )
    assert status == 200
    [call] = calls
    assert call["model"] == "claude-opus-4-1"
    assert (
        call["input_tokens"],
        call["output_tokens"],
        call["cache_read_tokens"],
        call["cache_write_tokens"],
    ) == (7, 42, 1200, 300)
    assert call["usage"]["cache_read_input_tokens"] == 1200


def test_request_headers_are_forwarded_but_not_hop_by_hop_ones(
    upstream: Callable[[list[Reply]], Upstream], gateway: Callable[..., Gateway]
) -> None:
    up = upstream([json_reply({"type": "message", "usage": {}})])
    gw = gateway("anthropic", up.url)
    request(
        gw.url + "/v1/messages?beta=true",
        {"model": "m", "messages": []},
        headers={
            "x-api-key": KEY,
            "anthropic-version": "2023-06-01",
            "Connection": "keep-alive, x-private",
            "x-private": "hop",
            "Proxy-Authorization": "Basic abcd",
        },
    )
    [seen] = up.seen
    assert (seen.path, seen.query) == ("/v1/messages", "beta=true")
    assert seen.headers["x-api-key"] == KEY
    assert seen.headers["anthropic-version"] == "2023-06-01"
    assert "x-private" not in {k.lower() for k in seen.headers}
    assert "proxy-authorization" not in {k.lower() for k in seen.headers}
    assert seen.headers["Host"] == f"127.0.0.1:{up.port}"


def test_first_event_reaches_the_client_before_the_upstream_sends_the_last(
    upstream: Callable[[list[Reply]], Upstream], gateway: Callable[..., Gateway]
) -> None:
    import threading

    gate = threading.Event()
    first = sse({"type": "message_start", "message": {"model": "m", "usage": {}}})
    up = upstream([Reply([first, sse({"type": "message_stop"})], gate=gate)])
    gw = gateway("anthropic", up.url)
    parts = urlsplit(gw.url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=30)
    try:
        body = json.dumps({"model": "m", "stream": True, "messages": []})
        conn.request("POST", parts.path + "/v1/messages", body=body)
        resp = conn.getresponse()
        got = b""
        while b"\n\n" not in got:
            got += resp.read1(65536)
        # The first event is here, and the upstream has not sent its last one yet.
        assert got == first
        assert not up.sent_last.is_set()
        gate.set()
        rest = resp.read()
        assert b"message_stop" in rest
    finally:
        gate.set()
        conn.close()


def test_gemini_stream_and_generate_content_are_metered(
    endpoint: ModelEndpoint, gateway: Callable[..., Gateway]
) -> None:
    calls: list[dict[str, Any]] = []
    gw = gateway("gemini", endpoint.url, on_call=calls.append)
    body = {"contents": [{"role": "user", "parts": [{"text": "write hello.py"}]}]}
    status, headers, data = request(
        gw.url + "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse",
        body,
        headers={"x-goog-api-key": KEY},
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[5:]) for line in data.split(b"\r\n") if line.startswith(b"data:")]
    usage = events[-1]["usageMetadata"]
    status, _, data = request(gw.url + "/v1beta/models/gemini-2.5-flash:generateContent", body)
    assert status == 200
    whole = json.loads(data)["usageMetadata"]
    stream_call, whole_call = calls
    assert stream_call["model"] == "gemini-2.5-pro" and stream_call["stream"] is True
    assert (stream_call["input_tokens"], stream_call["output_tokens"]) == (
        usage["promptTokenCount"],
        usage["candidatesTokenCount"],
    )
    assert whole_call["model"] == "gemini-2.5-flash" and whole_call["stream"] is False
    assert (whole_call["input_tokens"], whole_call["output_tokens"]) == (
        whole["promptTokenCount"],
        whole["candidatesTokenCount"],
    )


def _responses_stream(usage: dict[str, Any]) -> list[bytes]:
    return [
        sse({"type": "response.created", "response": {"id": "r1", "model": "gpt-5"}}),
        sse({"type": "response.output_text.delta", "delta": "hel"}),
        sse({"type": "response.output_text.delta", "delta": "lo"}),
        sse(
            {
                "type": "response.completed",
                "response": {"id": "r1", "model": "gpt-5-2025", "usage": usage},
            }
        ),
    ]


def test_openai_responses_and_chat_completions_are_metered(
    upstream: Callable[[list[Reply]], Upstream], gateway: Callable[..., Gateway]
) -> None:
    usage = {
        "input_tokens": 900,
        "input_tokens_details": {"cached_tokens": 512},
        "output_tokens": 33,
        "output_tokens_details": {"reasoning_tokens": 20},
        "total_tokens": 933,
    }
    chat_usage = {"prompt_tokens": 50, "completion_tokens": 5, "total_tokens": 55}
    up = upstream(
        [
            Reply(_responses_stream(usage)),
            Reply(
                [
                    b'data: {"choices":[{"delta":{"content":"hi"}}],"model":"gpt-4o"}\n\n',
                    b'data: {"choices":[],"model":"gpt-4o","usage":'
                    + json.dumps(chat_usage).encode()
                    + b"}\n\n",
                    b"data: [DONE]\n\n",
                ]
            ),
            json_reply({"id": "r2", "model": "gpt-5", "usage": usage}),
        ]
    )
    calls: list[dict[str, Any]] = []
    gw = gateway("openai", up.url, on_call=calls.append)
    assert gw.base_url.endswith("/v1")
    auth = {"Authorization": "Bearer " + KEY}
    status, _, data = request(
        gw.base_url + "/responses", {"model": "gpt-5", "stream": True}, headers=auth
    )
    assert status == 200 and b"response.completed" in data
    request(gw.base_url + "/chat/completions", {"model": "gpt-4o", "stream": True}, headers=auth)
    request(gw.base_url + "/responses", {"model": "gpt-5"}, headers=auth)
    responses, chat, whole = calls
    assert [s.path for s in up.seen] == ["/v1/responses", "/v1/chat/completions", "/v1/responses"]
    assert responses["model"] == "gpt-5-2025"
    assert (
        responses["input_tokens"],
        responses["output_tokens"],
        responses["cache_read_tokens"],
    ) == (900, 33, 512)
    assert responses["usage"]["output_tokens_details"] == {"reasoning_tokens": 20}
    assert (chat["input_tokens"], chat["output_tokens"], chat["model"]) == (50, 5, "gpt-4o")
    assert (whole["input_tokens"], whole["output_tokens"], whole["stream"]) == (900, 33, False)
