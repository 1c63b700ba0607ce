"""Security: the secret, the loopback bind, the fixed upstream, keys never written."""

from __future__ import annotations

import socket
from collections.abc import Callable

import anthropic
import pytest

from lorch.engine.gateway.cassette import Cassette
from lorch.engine.gateway.server import Gateway
from lorch.testing.model_endpoint import ModelEndpoint
from lorch.testing.model_script import Script
from lorch.wire.errors import ConfigError
from tests.gateway.http import request
from tests.gateway.upstream import Reply, Upstream, json_reply

KEY = "sk-ant-api03-very-secret-key-XYZ"
TOKEN = "ya29.gemini-oauth-token-ABCDEF"


def _root(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.port}"


@pytest.mark.parametrize(
    "path",
    [
        "/v1/messages",  # no secret
        "/wrong-secret/v1/messages",
        "/{secret}x/v1/messages",  # a longer one
        "/{secret_prefix}/v1/messages",  # a prefix of it
        "http://evil.example/{secret}/v1/messages",  # absolute form
    ],
)
def test_a_request_without_the_secret_gets_404_and_nothing_is_forwarded(
    upstream: Callable[[list[Reply]], Upstream], gateway: Callable[..., Gateway], path: str
) -> None:
    up = upstream([json_reply({"ok": True})])
    gw = gateway("anthropic", up.url)
    target = path.format(secret=gw.secret, secret_prefix=gw.secret[:-1])
    conn = socket.create_connection(("127.0.0.1", gw.port))
    with conn:
        conn.sendall(
            f"POST {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
            "Connection: close\r\n\r\n{}".encode()
        )
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 404")
    assert gw.secret.encode() not in answer
    assert up.seen == []


def test_the_secret_is_per_gateway_and_url_safe() -> None:
    a, b = Gateway("anthropic"), Gateway("anthropic")
    assert a.secret != b.secret and len(a.secret) >= 24
    with pytest.raises(ConfigError, match="URL-safe"):
        Gateway("anthropic", secret="a/b")


def test_it_binds_loopback_only(gateway: Callable[..., Gateway]) -> None:
    gw = gateway("anthropic", "http://127.0.0.1:9")
    assert gw.url.startswith(f"http://127.0.0.1:{gw.port}/")
    other = _other_address()
    if other is None:
        pytest.skip("no address but loopback to try")
    with pytest.raises(OSError):
        socket.create_connection((other, gw.port), timeout=5).close()


def _other_address() -> str | None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))  # no packet is sent: this picks a route
        addr: str = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if addr.startswith("127.") else addr


@pytest.mark.parametrize(
    "upstream_url", ["ftp://host", "not a url", "http://h/x?y=1", "http:///path"]
)
def test_a_bad_upstream_is_a_config_error(upstream_url: str) -> None:
    with pytest.raises(ConfigError, match=r"model\.upstream"):
        Gateway("anthropic", upstream_url)


def test_an_unknown_provider_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"model\.provider: expected one of anthropic"):
        Gateway("mistral")


def test_the_client_cannot_redirect_the_upstream(
    upstream: Callable[[list[Reply]], Upstream], gateway: Callable[..., Gateway]
) -> None:
    up = upstream([json_reply({"ok": True})])
    gw = gateway("anthropic", up.url)
    for path in ("/v1/messages", "//evil.example/v1/messages", "/@evil.example/x"):
        status, _, _ = request(
            gw.url + path,
            {"model": "m"},
            headers={"Host": "evil.example", "X-Forwarded-Host": "evil.example"},
        )
        assert status == 200
    assert len(up.seen) == 3
    assert {s.headers["Host"] for s in up.seen} == {f"127.0.0.1:{up.port}"}


def test_keys_and_authorization_never_reach_the_cassette(
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
    sdk: Callable[..., anthropic.Anthropic],
) -> None:
    script = Script.from_dict({"steps": [], "fallback": [{"type": "text", "text": "ok"}]})
    calls = cassette()
    with ModelEndpoint(script) as endpoint:
        gw = gateway("anthropic", endpoint.url, cassette=calls)
        client = sdk(gw, KEY, default_headers={"Authorization": f"Bearer {TOKEN}"})
        with client.messages.stream(
            model="claude-sonnet-4-5", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            stream.get_final_message()
        client.models.list()
        gemini = gateway("gemini", endpoint.url, cassette=calls)
        request(
            gemini.url + f"/v1beta/models/gemini-2.5-pro:generateContent?key={KEY}",
            {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]},
            headers={"x-goog-api-key": TOKEN},
        )
    data = calls.path.read_bytes()
    assert data.count(b"\n") == 3
    for secret in (KEY, TOKEN):
        assert secret.encode() not in data
    for header in (b"x-api-key", b"authorization", b"x-goog-api-key"):
        assert header not in data.lower()


def test_a_key_an_upstream_echoes_is_redacted_from_the_cassette(
    upstream: Callable[[list[Reply]], Upstream],
    gateway: Callable[..., Gateway],
    cassette: Callable[[], Cassette],
) -> None:
    up = upstream([json_reply({"error": {"message": f"invalid key {KEY}"}}, status=401)])
    calls = cassette()
    gw = gateway("anthropic", up.url, cassette=calls)
    status, _, body = request(gw.url + "/v1/messages", {"model": "m"}, headers={"x-api-key": KEY})
    assert status == 401 and KEY.encode() in body  # the agent sees what the upstream said
    data = calls.path.read_bytes()
    assert KEY.encode() not in data and b"invalid key ***" in data
