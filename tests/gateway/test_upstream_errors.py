"""Upstream errors pass through honestly and are recorded as such: 429, 500, a cut, no upstream."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable
from typing import Any

import anthropic
import pytest

from lorch.engine.gateway.cassette import Cassette, load
from lorch.engine.gateway.replay import Replay
from lorch.engine.gateway.server import Gateway
from tests.gateway.http import request
from tests.gateway.upstream import Reply, Upstream, json_reply, sse

START = sse(
    {"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 9}}},
    "message_start",
)
BODY = {"model": "m", "stream": True, "messages": []}


@pytest.mark.parametrize(
    ("status", "kind"), [(429, "rate_limit_error"), (500, "api_error"), (529, "overloaded_error")]
)
def test_error_statuses_pass_through_and_are_recorded(
    upstream: Callable[[list[Reply]], Upstream],
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
    status: int,
    kind: str,
) -> None:
    error = {"type": "error", "error": {"type": kind, "message": "slow down"}}
    reply = json_reply(error, status=status)
    reply.headers["retry-after"] = "7"
    up = upstream([reply])
    calls: list[dict[str, Any]] = []
    recorded = cassette()
    gw = gateway("anthropic", up.url, on_call=calls.append, cassette=recorded)
    got, headers, body = request(gw.url + "/v1/messages", BODY)
    assert (got, headers["retry-after"], json.loads(body)) == (status, "7", error)
    [call] = calls
    assert (call["status"], call["outcome"], call["input_tokens"]) == (status, "complete", None)
    [entry] = load(recorded.path)
    assert (entry.status, json.loads(b"".join(entry.chunks))) == (status, error)


def test_the_sdk_sees_a_rate_limit_as_a_rate_limit(
    upstream: Callable[[list[Reply]], Upstream],
    gateway: Callable[..., Gateway],
    sdk: Callable[..., anthropic.Anthropic],
) -> None:
    error = {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}}
    up = upstream([json_reply(error, status=429)])
    gw = gateway("anthropic", up.url)
    client = sdk(gw)
    with pytest.raises(anthropic.RateLimitError, match="slow down"):
        client.messages.create(model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}])


def _cut_stream(gw: Gateway) -> bytes:
    """The body a client gets for a streamed request, which must end in a cut."""
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("POST", f"/{gw.secret}/v1/messages", body=json.dumps(BODY))
        resp = conn.getresponse()
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
        return cut.value.partial
    finally:
        conn.close()


def test_a_stream_the_upstream_cuts_is_cut_for_the_agent_and_recorded_as_dropped(
    upstream: Callable[[list[Reply]], Upstream],
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
) -> None:
    up = upstream([Reply([START], drop=True)])
    calls: list[dict[str, Any]] = []
    recorded = cassette()
    gw = gateway("anthropic", up.url, on_call=calls.append, cassette=recorded)
    assert _cut_stream(gw) == START
    [call] = calls
    assert (call["outcome"], call["input_tokens"]) == ("dropped", 9)
    [entry] = load(recorded.path)
    assert (entry.outcome, entry.chunks) == ("dropped", (START,))
    # Replayed, the cut is a cut again.
    player = gateway("anthropic", "http://127.0.0.1:9", replay=Replay([entry], strict=True))
    assert _cut_stream(player) == START
    assert gw.failures == player.failures == []


def test_an_unreachable_upstream_is_a_502_in_the_providers_shape(
    gateway: Callable[..., Gateway],
) -> None:
    calls: list[dict[str, Any]] = []
    gw = gateway("openai", "http://127.0.0.1:9", on_call=calls.append)
    status, _, body = request(gw.base_url + "/responses", {"model": "gpt-5"})
    assert status == 502
    assert json.loads(body)["error"]["message"].startswith("lorch gateway: upstream unreachable")
    assert [(c["status"], c["outcome"]) for c in calls] == [(502, "unreachable")]


def test_an_answer_the_agent_walks_away_from_is_still_read_and_recorded(
    upstream: Callable[[list[Reply]], Upstream],
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
) -> None:
    gate = threading.Event()
    stop = sse({"type": "message_stop"}, "message_stop")
    up = upstream([Reply([START, stop], gate=gate)])
    done = threading.Event()
    calls: list[dict[str, Any]] = []

    def on_call(call: dict[str, Any]) -> None:
        calls.append(call)
        done.set()

    recorded = cassette()
    gw = gateway("anthropic", up.url, on_call=on_call, cassette=recorded)
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    conn.request("POST", f"/{gw.secret}/v1/messages", body=json.dumps(BODY))
    resp = conn.getresponse()
    assert resp.read1(65536) == START
    conn.close()  # the agent is gone mid-answer
    gate.set()
    assert done.wait(30)
    assert calls[0]["outcome"] in ("client_gone", "complete")
    [entry] = load(recorded.path)
    assert (entry.outcome, b"".join(entry.chunks)) == ("complete", START + stop)


def test_a_callback_that_raises_does_not_take_the_gateway_down(
    upstream: Callable[[list[Reply]], Upstream], gateway: Callable[..., Gateway]
) -> None:
    up = upstream([json_reply({"type": "message", "usage": {"input_tokens": 1}})])

    def broken(call: dict[str, Any]) -> None:
        raise ValueError("ledger full")

    gw = gateway("anthropic", up.url, on_call=broken)
    for _ in range(2):
        assert request(gw.url + "/v1/messages", {"model": "m"})[0] == 200
    assert gw.failures == ["on_call raised ValueError: ledger full"] * 2
