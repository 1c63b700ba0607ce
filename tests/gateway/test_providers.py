"""Reading usage from each provider's answers, however the bytes are cut into chunks."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorch.engine.gateway.providers import Meter, classify, error_body
from lorch.testing import gemini_api, model_stream

BLOCKS: list[dict[str, Any]] = [
    {"type": "text", "text": "héllo wörld, " * 8},
    {"type": "tool_use", "id": "toolu_1", "name": "Write", "input": {"p": "x" * 100}},
]
ANTHROPIC = b"".join(model_stream.events("msg_1", "claude-x", BLOCKS, "tool_use", 321, 45))
GEMINI = b"".join(gemini_api.events(BLOCKS, "gemini-x", (77, 8)))


def _cuts(data: bytes, points: list[int]) -> list[bytes]:
    edges = [0, *sorted({p % (len(data) + 1) for p in points}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=60)
@given(st.lists(st.integers(min_value=0), max_size=30), st.booleans())
def test_anthropic_usage_is_the_same_however_the_stream_is_cut(
    points: list[int], crlf: bool
) -> None:
    data = ANTHROPIC.replace(b"\n", b"\r\n") if crlf else ANTHROPIC
    meter = Meter("anthropic", event_stream=True)
    for chunk in _cuts(data, points):
        meter.feed(chunk)
    usage = meter.finish()
    assert (usage.input_tokens, usage.output_tokens, meter.model) == (321, 45, "claude-x")
    assert meter.terminal


@settings(max_examples=60)
@given(st.lists(st.integers(min_value=0), max_size=30))
def test_gemini_usage_is_the_same_however_the_stream_is_cut(points: list[int]) -> None:
    meter = Meter("gemini", event_stream=True)
    for chunk in _cuts(GEMINI, points):
        meter.feed(chunk)
    usage = meter.finish()
    assert (usage.input_tokens, usage.output_tokens, meter.model) == (77, 8, "gemini-x")
    assert meter.terminal


def test_the_end_of_an_answer_is_seen_only_once_it_is_whole() -> None:
    meter = Meter("anthropic", event_stream=True)
    stop = model_stream.sse("message_stop", {"type": "message_stop"})
    meter.feed(stop[:-1])
    assert not meter.terminal
    meter.feed(stop[-1:])
    assert meter.terminal


@pytest.mark.parametrize(
    "junk",
    [
        b"data: {not json\n\n",
        b"data: [1, 2]\n\n",
        b'data: {"type": "message_start", "message": {"usage": {"input_tokens": -4}}}\n\n',
        b'data: {"type": "message_start", "message": {"usage": {"input_tokens": true}}}\n\n',
        b'data: {"type": "message_delta", "usage": "lots"}\n\n',
        b"\xff\xfe\x00garbage\n\n",
        b"data: " + b"[" * 100_000 + b"\n\n",
    ],
)
def test_usage_the_provider_did_not_report_properly_is_none_never_an_error(junk: bytes) -> None:
    meter = Meter("anthropic", event_stream=True)
    meter.feed(junk)
    usage = meter.finish()
    assert usage.input_tokens is None and usage.output_tokens is None


def test_an_event_over_the_limit_is_not_metered_but_the_next_one_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("lorch.engine.gateway.providers.MAX_EVENT", 1000)
    meter = Meter("openai", event_stream=True)
    meter.feed(b"data: " + b"x" * 5000 + b"\n\n")
    done = {"type": "response.completed", "response": {"usage": {"input_tokens": 5}}}
    meter.feed(b"data: " + json.dumps(done).encode() + b"\n\n")
    assert meter.finish().input_tokens == 5


@pytest.mark.parametrize(
    ("provider", "method", "path", "body", "expected"),
    [
        ("anthropic", "POST", "/v1/messages", {"model": "c", "stream": True}, (True, "c", True)),
        ("anthropic", "POST", "/v1/messages/count_tokens", {"model": "c"}, (False, "c", False)),
        ("anthropic", "GET", "/v1/models", None, (False, None, False)),
        ("openai", "POST", "/v1/responses", {"model": "g", "stream": True}, (True, "g", True)),
        ("openai", "POST", "/v1/chat/completions", {"model": "g"}, (True, "g", False)),
        ("openai", "GET", "/v1/models", None, (False, None, False)),
        (
            "gemini",
            "POST",
            "/v1beta/models/gemini-2.5-pro:streamGenerateContent",
            {},
            (True, "gemini-2.5-pro", True),
        ),
        ("gemini", "POST", "/v1beta/models/g:generateContent", {}, (True, "g", False)),
        ("gemini", "POST", "/v1beta/models/g:countTokens", {}, (False, None, False)),
        ("anthropic", "POST", "/v1/messages", ["not", "an", "object"], (True, None, False)),
    ],
)
def test_which_requests_are_model_calls(
    provider: str, method: str, path: str, body: Any, expected: tuple[bool, str | None, bool]
) -> None:
    call = classify(provider, method, path, body)
    assert (call.model_call, call.model, call.stream) == expected


def test_errors_are_in_each_providers_shape() -> None:
    assert error_body("anthropic", 400, "no")["error"] == {
        "type": "invalid_request_error",
        "message": "no",
    }
    assert error_body("openai", 502, "no")["error"]["type"] == "server_error"
    assert error_body("gemini", 429, "no")["error"] == {
        "code": 429,
        "message": "no",
        "status": "RESOURCE_EXHAUSTED",
    }
