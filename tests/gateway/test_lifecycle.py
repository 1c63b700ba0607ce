"""Start and stop: the port is reported, a stop cuts calls in flight and records none of them."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Callable

import pytest

from lorch.engine.gateway.cassette import Cassette
from lorch.engine.gateway.server import Gateway, GatewayError
from tests.gateway.upstream import Reply, Upstream, sse


def test_a_taken_port_is_one_clear_error() -> None:
    with Gateway("anthropic") as first:
        taken = rf"127\.0\.0\.1:{first.port}: .*in use"
        with pytest.raises(GatewayError, match=taken):
            Gateway("anthropic", port=first.port).start()


def test_stop_cuts_a_call_in_flight_and_records_nothing_half_done(
    upstream: Callable[[list[Reply]], Upstream], cassette: Callable[[], Cassette]
) -> None:
    gate = threading.Event()
    start = sse({"type": "message_start", "message": {"usage": {}}})
    up = upstream([Reply([start, sse({"type": "message_stop"})], gate=gate)])
    recorded = cassette()
    gw = Gateway("anthropic", up.url, cassette=recorded, shutdown_timeout=0.5).start()
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=30)
    try:
        conn.request("POST", f"/{gw.secret}/v1/messages", body=json.dumps({"stream": True}))
        resp = conn.getresponse()
        assert resp.read1(65536) == start
        gw.stop()  # the upstream is still holding its last event
        with pytest.raises((http.client.IncompleteRead, ConnectionError)):
            resp.read()
    finally:
        gate.set()
        conn.close()
    assert recorded.path.read_bytes() == b""
    gw.stop()  # twice is harmless
