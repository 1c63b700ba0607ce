"""A hostile client cannot crash or stall the gateway: malformed HTTP, huge bodies, slow-loris."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from lorch.engine.gateway.cassette import Cassette, load
from lorch.engine.gateway.server import Gateway
from tests.gateway.http import request
from tests.gateway.upstream import Reply, Upstream, json_reply


def _raw(gw: Gateway, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection; everything the gateway answers until it closes."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=30) as conn:
        conn.sendall(data)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    return answer


def _still_serves(gw: Gateway, up: Upstream) -> None:
    before = len(up.seen)
    status, _, _ = request(gw.url + "/v1/messages", {"model": "m"})
    assert status == 200 and len(up.seen) == before + 1


@pytest.mark.parametrize(
    "garbage",
    [
        b"\x00\x01\x02 not http at all\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\n" + b"X-Many: y\r\n" * 1000 + b"\r\n",
        b"GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n",
    ],
)
def test_malformed_http_gets_an_error_and_the_gateway_goes_on(
    upstream: Callable[[list[Reply]], Upstream], gateway: Callable[..., Gateway], garbage: bytes
) -> None:
    up = upstream([json_reply({})])
    gw = gateway("anthropic", up.url)
    answer = _raw(gw, garbage.replace(b"/x", f"/{gw.secret}/v1/messages".encode()))
    assert answer == b"" or re.match(rb"HTTP/1\.[01] 4\d\d ", answer)
    assert up.seen == []
    _still_serves(gw, up)


def test_a_body_over_the_limit_is_refused_unread_and_unforwarded(
    upstream: Callable[[list[Reply]], Upstream], gateway: Callable[..., Gateway]
) -> None:
    up = upstream([json_reply({})])
    gw = gateway("anthropic", up.url, max_body=4096)
    status, _, body = request(gw.url + "/v1/messages", b"x" * 5000)
    assert status == 413 and b"over the gateway's limit of 4096 bytes" in body
    # Announcing a huge length is refused before anything is read.
    answer = _raw(
        gw,
        f"POST /{gw.secret}/v1/messages HTTP/1.1\r\nHost: x\r\n"
        f"Content-Length: {1 << 40}\r\n\r\n".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 413")
    # A chunked body that grows past the limit is cut off as it grows.
    chunk = b"1000\r\n" + b"y" * 0x1000 + b"\r\n"
    answer = _raw(
        gw,
        f"POST /{gw.secret}/v1/messages HTTP/1.1\r\nHost: x\r\n"
        "Transfer-Encoding: chunked\r\n\r\n".encode()
        + chunk * 2
        + b"0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 413")
    assert up.seen == []
    _still_serves(gw, up)


def test_a_body_dribbled_too_slowly_times_out(
    upstream: Callable[[list[Reply]], Upstream], gateway: Callable[..., Gateway]
) -> None:
    up = upstream([json_reply({})])
    gw = gateway("anthropic", up.url, body_timeout=0.3)
    answer = _raw(
        gw,
        f"POST /{gw.secret}/v1/messages HTTP/1.1\r\nHost: x\r\n"
        "Content-Length: 100\r\n\r\n{}".encode(),
    )
    assert answer.startswith(b"HTTP/1.1 408")
    assert up.seen == []


def test_slow_loris_clients_neither_stall_others_nor_stay_forever(
    upstream: Callable[[list[Reply]], Upstream], gateway: Callable[..., Gateway]
) -> None:
    up = upstream([json_reply({})])
    gw = gateway("anthropic", up.url, header_timeout=0.5)
    lorises = []
    for _ in range(50):
        conn = socket.create_connection(("127.0.0.1", gw.port), timeout=30)
        conn.sendall(b"POST /" + gw.secret.encode() + b"/v1/messages HTTP/1.1\r\nHost: x\r\nX-")
        lorises.append(conn)
    try:
        # Fifty half-sent requests hold nothing up.
        _still_serves(gw, up)
        for conn in lorises:
            conn.sendall(b"a")  # still dribbling
        # Each is closed once it has had header_timeout to finish its headers.
        deadline = time.monotonic() + 30
        for conn in lorises:
            conn.settimeout(max(0.1, deadline - time.monotonic()))
            assert conn.recv(65536) == b""
    finally:
        for conn in lorises:
            conn.close()
    assert len(up.seen) == 1
    _still_serves(gw, up)


def test_a_body_nested_too_deep_to_decode_is_still_forwarded_metered_and_recorded(
    upstream: Callable[[list[Reply]], Upstream],
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
) -> None:
    up = upstream([json_reply({"type": "message", "usage": {"input_tokens": 3}})])
    calls: list[dict[str, Any]] = []
    recorded = cassette()
    gw = gateway("anthropic", up.url, on_call=calls.append, cassette=recorded)
    deep = b'{"model": "m", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    status, _, _ = request(gw.url + "/v1/messages", deep)
    assert status == 200 and up.seen[0].body == deep
    assert [c["input_tokens"] for c in calls] == [3]
    [entry] = load(recorded.path)
    assert entry.request["body"]["size"] == len(deep)
