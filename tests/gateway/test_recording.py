"""Recording and replay: cassettes, durability before the last byte, fingerprints, refusals."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorch.engine.gateway.cassette import Cassette, CassetteError, Recorded, load
from lorch.engine.gateway.normalize import Normalizer, fingerprint
from lorch.engine.gateway.replay import Replay
from lorch.engine.gateway.server import Gateway
from lorch.testing.model_endpoint import ModelEndpoint
from lorch.testing.model_script import Script
from lorch.wire.errors import ConfigError
from tests.gateway.http import request
from tests.gateway.upstream import Reply, Upstream, json_reply, sse

DEAD = "http://127.0.0.1:9"  # nothing listens: a call that reaches it fails


@pytest.fixture
def endpoint() -> Iterator[ModelEndpoint]:
    script = Script.from_dict(
        {
            "steps": [
                {"name": "one", "when": {"contains": "first"}, "reply": [_text("one " * 20)]},
                {"name": "two", "when": {"contains": "second"}, "reply": [_text("two " * 20)]},
            ],
            "fallback": [_text("other")],
        }
    )
    with ModelEndpoint(script) as ep:
        yield ep


def _text(t: str) -> dict[str, Any]:
    return {"type": "text", "text": t}


def _ask(gw: Gateway, text: str, **extra: Any) -> tuple[int, bytes]:
    body = {"model": "claude-sonnet-4-5", "max_tokens": 10, "stream": True, **extra}
    body["messages"] = [{"role": "user", "content": text}]
    status, _, data = request(gw.url + "/v1/messages", body, headers={"x-api-key": "sk-test"})
    return status, data


def test_each_call_is_recorded_with_its_fingerprint_request_stream_and_usage(
    endpoint: ModelEndpoint,
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
) -> None:
    calls = cassette()
    gw = gateway("anthropic", endpoint.url, cassette=calls)
    gw.set_context({"command": "ik:1", "attempt": 2})
    status, answer = _ask(gw, "first")
    assert status == 200
    [call] = load(calls.path)
    assert call.model_call and call.outcome == "complete" and call.status == 200
    assert b"".join(call.chunks) == answer
    assert call.request["path"] == "/v1/messages"
    assert call.request["body"]["messages"] == [{"role": "user", "content": "first"}]
    assert call.fingerprint == fingerprint(call.request)
    assert call.usage is not None and call.usage["input_tokens"] > 0
    assert call.context == {"command": "ik:1", "attempt": 2}
    assert ("content-type", "text/event-stream") in {(k.lower(), v) for k, v in call.headers}


class _Witness(Cassette):
    """A cassette that, while appending, looks at what the client has received."""

    def __init__(self, path: Path, received: Callable[[], bytes]) -> None:
        super().__init__(path)
        self.received = received
        self.seen_at_append: bytes | None = None

    def append(self, call: Recorded, secrets: Any = ()) -> None:
        deadline = time.monotonic() + 30
        # Wait until everything but the held-back byte has reached the client.
        while b"message_stop" not in _dechunk(self.received()) and time.monotonic() < deadline:
            time.sleep(0.005)
        self.seen_at_append = _dechunk(self.received())
        super().append(call, secrets)


def _dechunk(raw: bytes) -> bytes:
    """The body of a chunked HTTP response, as far as it has arrived."""
    _, _, rest = raw.partition(b"\r\n\r\n")
    body = b""
    while b"\r\n" in rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        body += rest[:size]
        rest = rest[size + 2 :]
    return body


def test_the_call_is_durable_before_its_last_byte_reaches_the_agent(
    tmp_path: Path, upstream: Callable[[list[Reply]], Upstream], gateway: Callable[..., Gateway]
) -> None:
    events = [
        sse({"type": "message_start", "message": {"model": "m", "usage": {"input_tokens": 3}}}),
        sse({"type": "message_stop"}),
    ]
    up = upstream([Reply(events)])
    received = bytearray()
    lock = threading.Lock()

    def snapshot() -> bytes:
        with lock:
            return bytes(received)

    witness = _Witness(tmp_path / "calls.jsonl", snapshot)
    try:
        gw = gateway("anthropic", up.url, cassette=witness)
        conn = socket.create_connection(("127.0.0.1", gw.port))
        body = json.dumps({"model": "m", "stream": True}).encode()
        conn.sendall(
            f"POST /{gw.secret}/v1/messages HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        with conn:
            while chunk := conn.recv(65536):
                with lock:
                    received.extend(chunk)
    finally:
        witness.close()
    everything = b"".join(events)
    # While the call was being made durable the agent had all of it but its last byte,
    assert witness.seen_at_append == everything[:-1]
    # and that byte came once it was.
    assert _dechunk(bytes(received)) == everything
    assert len(load(witness.path)) == 1


def test_a_recorded_call_is_replayed_chunk_for_chunk_without_the_upstream(
    endpoint: ModelEndpoint,
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
) -> None:
    calls = cassette()
    recorder = gateway("anthropic", endpoint.url, cassette=calls)
    live = [_ask(recorder, "first"), _ask(recorder, "second")]
    assert endpoint.count() == 2
    metered: list[dict[str, Any]] = []
    player = gateway(
        "anthropic", DEAD, replay=Replay(load(calls.path), strict=True), on_call=metered.append
    )
    replayed = [_ask(player, "first"), _ask(player, "second")]
    assert replayed == live
    assert endpoint.count() == 2
    assert [m["source"] for m in metered] == ["replay", "replay"]
    assert metered[0]["input_tokens"] == load(calls.path)[0].usage["input_tokens"]  # type: ignore[index]


def test_the_anthropic_sdk_gets_the_same_answer_from_a_replay(
    endpoint: ModelEndpoint,
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
    sdk: Callable[..., anthropic.Anthropic],
) -> None:
    calls = cassette()
    answers = []
    for gw in (
        gateway("anthropic", endpoint.url, cassette=calls),
        None,
    ):
        gw = gw or gateway("anthropic", DEAD, replay=Replay(load(calls.path), strict=True))
        client = sdk(gw)
        with client.messages.stream(
            model="claude-sonnet-4-5",
            max_tokens=10,
            messages=[{"role": "user", "content": "first"}],
        ) as stream:
            answers.append(stream.get_final_message().model_dump())
    assert answers[0] == answers[1]
    assert endpoint.count() == 1


def test_strict_replay_refuses_an_unrecorded_request_saying_where_it_differs(
    endpoint: ModelEndpoint,
    upstream: Callable[[list[Reply]], Upstream],
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
) -> None:
    calls = cassette()
    _ask(gateway("anthropic", endpoint.url, cassette=calls), "first")
    up = upstream([json_reply({})])
    metered: list[dict[str, Any]] = []
    player = gateway(
        "anthropic", up.url, replay=Replay(load(calls.path), strict=True), on_call=metered.append
    )
    player.set_context({"command": "ik:7"})
    status, data = _ask(player, "third")
    assert status == 400
    error = json.loads(data)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    message = error["error"]["message"]
    assert "no recording for POST /v1/messages" in message and '"ik:7"' in message
    assert 'body.messages[0].content: sent "third", recorded "first"' in message
    assert "\n" not in message
    assert player.refusals == [message]
    assert up.seen == []
    assert [(m["outcome"], m["source"]) for m in metered] == [("refused", "gateway")]


def test_a_resumed_turn_replays_until_the_first_mismatch_then_goes_live(
    endpoint: ModelEndpoint,
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
) -> None:
    calls = cassette()
    recorder = gateway("anthropic", endpoint.url, cassette=calls)
    _ask(recorder, "first")
    _ask(recorder, "second")
    replay = Replay(load(calls.path), strict=False)
    resumed = gateway("anthropic", endpoint.url, replay=replay)
    _ask(resumed, "first")
    assert endpoint.count() == 2  # answered from the record
    _ask(resumed, "something else")
    assert endpoint.count() == 3  # left the recorded path: live
    _ask(resumed, "second")
    assert endpoint.count() == 4  # and stays live, though this one was recorded
    assert replay.remaining == 1


def test_volatile_fields_do_not_change_the_fingerprint(
    endpoint: ModelEndpoint,
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
) -> None:
    calls = cassette()
    text = "first: today is 2025-01-01, session 0f8fad5b-d9cb-469f-a165-70867728950e in /tmp/tmpa1"
    _ask(
        gateway("anthropic", endpoint.url, cassette=calls),
        text,
        metadata={"user_id": "user_abc_account_1"},
    )
    other = "first: today is 2026-12-08, session 7c9e6679-7425-40de-944b-e07fc1f90ae7 in /tmp/tmpzz"
    player = gateway("anthropic", DEAD, replay=Replay(load(calls.path), strict=True))
    status, _ = _ask(player, other, metadata={"user_id": "user_xyz_account_2"})
    assert status == 200
    assert player.refusals == []


def test_non_model_calls_replay_as_often_as_asked(
    endpoint: ModelEndpoint,
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
) -> None:
    calls = cassette()
    recorder = gateway("anthropic", endpoint.url, cassette=calls)
    status, _, models = request(recorder.url + "/v1/models")
    assert status == 200
    player = gateway("anthropic", DEAD, replay=Replay(load(calls.path), strict=True))
    for _ in range(3):
        assert request(player.url + "/v1/models")[2] == models


# --- the cassette format --------------------------------------------------------------


def _recorded(**over: Any) -> Recorded:
    request = {"method": "POST", "path": "/v1/messages", "query": [], "headers": {}, "body": {}}
    fields: dict[str, Any] = {
        "provider": "anthropic",
        "fingerprint": fingerprint(request),
        "model_call": True,
        "request": request,
        "status": 200,
        "headers": (("content-type", "text/event-stream"),),
        "chunks": (b"data: \xc3", b"\xa9\n\n", b"\xff\xfe"),
    }
    return Recorded(**{**fields, **over})


def test_a_cassette_round_trips_chunks_that_are_not_utf8(tmp_path: Path) -> None:
    with Cassette(tmp_path / "c.jsonl") as c:
        c.append(_recorded())
        c.append(_recorded(outcome="dropped", status=500))
    first, second = load(tmp_path / "c.jsonl")
    assert first == _recorded()
    assert (second.outcome, second.status) == ("dropped", 500)


def test_a_torn_last_line_is_ignored_and_a_bad_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    with Cassette(path) as c:
        c.append(_recorded())
    whole = path.read_bytes()
    path.write_bytes(whole + whole[:40])
    assert len(load(path)) == 1
    path.write_bytes(b'{"v": 1}\n' + whole)
    with pytest.raises(CassetteError, match=r"c\.jsonl:1: fingerprint: missing"):
        load(path)
    path.write_bytes(whole + b"not json\n")
    with pytest.raises(CassetteError, match=r"c\.jsonl:2: not a JSON line"):
        load(path)


# --- normalization --------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def _norm(body: Any, normalizer: Normalizer | None = None) -> dict[str, Any]:
    n = normalizer or Normalizer()
    return n.request("POST", "/v1/messages", [], {}, json.dumps(body).encode())


@settings(max_examples=50)
@given(st.dictionaries(st.text(max_size=8), _json, max_size=6))
def test_the_fingerprint_ignores_key_order_and_is_deterministic(body: dict[str, Any]) -> None:
    reordered = dict(reversed(list(body.items())))
    assert fingerprint(_norm(body)) == fingerprint(_norm(reordered))


@settings(max_examples=50)
@given(st.text(alphabet="abcdefghij ", min_size=1, max_size=30), st.text(max_size=1))
def test_a_change_that_is_not_volatile_changes_the_fingerprint(text: str, extra: str) -> None:
    a = {"messages": [{"role": "user", "content": text}]}
    b = {"messages": [{"role": "user", "content": text + "x" + extra}]}
    assert fingerprint(_norm(a)) != fingerprint(_norm(b))


def test_normalizer_rules_are_configurable_and_checked() -> None:
    custom = Normalizer.from_dict({"rules": [[r"run-\d+", "run-N"]], "drop": ["seed"]})
    assert _norm({"t": "run-12", "seed": 4}, custom) == _norm({"t": "run-99"}, custom)
    assert _norm({"t": "0f8fad5b-d9cb-469f-a165-70867728950e"}, custom)["body"]["t"] != "<uuid>"
    assert Normalizer.from_dict(custom.to_dict()) == custom
    with pytest.raises(ConfigError, match=r"normalizer rule 1 \('\('\) is not a regular"):
        Normalizer.from_dict({"rules": [["(", "x"]]})
    with pytest.raises(ConfigError, match="normalizer: unknown field 'rule'"):
        Normalizer.from_dict({"rule": []})


def test_credentials_in_the_query_are_not_part_of_the_request() -> None:
    n = Normalizer()
    a = n.request("POST", "/v1beta/models/g:generateContent", [("key", "k1")], {}, b"{}")
    b = n.request("POST", "/v1beta/models/g:generateContent", [("key", "k2")], {}, b"{}")
    assert a == b and "k1" not in json.dumps(a)
