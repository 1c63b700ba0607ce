"""The gateway's HTTP server: one provider's API on 127.0.0.1, forwarded to a fixed upstream.

A :class:`Gateway` runs an aiohttp server on its own event-loop thread inside
lorch's process (a daemon thread: it dies with lorch). Each request must start
with the per-run secret as its first path segment
(``http://127.0.0.1:PORT/SECRET/v1/messages``); any other request gets a bare
404 and nothing is forwarded. The rest of the path and the query are appended to
the upstream URL given at construction (an agent cannot choose the host), the
request's headers are forwarded but for the hop-by-hop ones, and the answer is
streamed back chunk by chunk as it arrives.

Every model call ends in one *call record* (a plain dict, see :func:`record`)
handed to ``on_call`` on the gateway's thread; calls that are not model calls
(model lists, token counts) are forwarded and recorded in the cassette but not
metered. With a :class:`~lorch.engine.gateway.cassette.Cassette`, each upstream answer
is appended to it and fsynced before the answer's last byte is passed on: the
gateway passes every chunk of an event stream at once, except that from the
event that ends the answer on (``message_stop``, ``response.completed``, …; and
for a body that is not an event stream, from the first chunk on) it holds back
the last byte of each chunk until the upstream has finished and the call is
durable. With a :class:`~lorch.engine.gateway.replay.Replay`, a request it has a
recording for is answered from the recording, chunk for chunk, with no upstream
call; in strict replay a request with none is refused with an error in the
provider's shape and one line saying where it differs from the nearest
recording (also kept in :attr:`Gateway.refusals`).

What a hostile client cannot do: send a body over ``max_body`` (413, nothing
forwarded), dribble a body for longer than ``body_timeout`` (408), hold a
connection open without finishing its request headers for longer than
``header_timeout`` (the connection is closed), or stall anyone else by being
slow (every connection is served concurrently by the event loop). Malformed HTTP
gets aiohttp's 400.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
from aiohttp import web
from yarl import URL

from lorch.engine.gateway.cassette import Cassette, Recorded
from lorch.engine.gateway.normalize import Normalizer, decode_json, fingerprint, is_json
from lorch.engine.gateway.providers import (
    BASE_PATH,
    DEFAULT_UPSTREAM,
    PROVIDERS,
    Call,
    Meter,
    Usage,
    classify,
    error_body,
)
from lorch.engine.gateway.replay import Replay
from lorch.wire.errors import ConfigError, LorchError

MAX_BODY = 32 * 1024 * 1024
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "expect",  # the gateway has read the whole body already
        "content-length",
        # The upstream is asked for identity encoding: the gateway reads the stream.
        "accept-encoding",
        "content-encoding",
    }
)
RESPONSE_DROPPED = HOP_BY_HOP | {"set-cookie"}
# Where a request carries the user's key: the values are redacted from cassettes.
KEY_HEADERS = ("x-api-key", "authorization", "x-goog-api-key", "api-key")
KEY_PARAMS = ("key", "api_key")

OnCall = Callable[[dict[str, Any]], None]

# aiohttp logs each malformed request with its traceback: a hostile agent could
# flood lorch's terminal that way. The gateway's own logger swallows them.
_QUIET = logging.getLogger("lorch.engine.gateway.http")
_QUIET.addHandler(logging.NullHandler())
_QUIET.propagate = False


class GatewayError(LorchError):
    """The gateway could not start (its port, its upstream)."""


def _upstream_url(provider: str, upstream: str | None) -> str:
    url = upstream or DEFAULT_UPSTREAM[provider]
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"model.upstream: expected an http(s) URL, found {url!r}")
    if parts.query or parts.fragment:
        raise ConfigError(f"model.upstream: {url!r} may not carry a query or a fragment")
    return url.rstrip("/")


class Gateway:
    """One provider's API on 127.0.0.1, forwarded to ``upstream``; a context manager."""

    def __init__(
        self,
        provider: str,
        upstream: str | None = None,
        *,
        on_call: OnCall | None = None,
        cassette: Cassette | None = None,
        replay: Replay | None = None,
        normalizer: Normalizer | None = None,
        secret: str | None = None,
        port: int = 0,
        max_body: int = MAX_BODY,
        header_timeout: float = 60.0,
        body_timeout: float = 60.0,
        connect_timeout: float = 30.0,
        read_timeout: float = 600.0,
        shutdown_timeout: float = 2.0,
    ) -> None:
        if provider not in PROVIDERS:
            raise ConfigError(
                f"model.provider: expected one of {', '.join(PROVIDERS)}, found {provider!r}"
            )
        self.provider = provider
        self.upstream = _upstream_url(provider, upstream)
        self.secret = secret or secrets.token_urlsafe(24)
        if not self.secret.replace("-", "").replace("_", "").isalnum():
            raise ConfigError("the gateway secret must be URL-safe (letters, digits, - and _)")
        self.normalizer = normalizer or Normalizer()
        self.refusals: list[str] = []
        self.failures: list[str] = []  # what went wrong on the gateway's side (a full disk)
        self._on_call = on_call
        self._cassette = cassette
        self._replay = replay
        self._max_body = max_body
        self._header_timeout = header_timeout
        self._body_timeout = body_timeout
        self._client_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=connect_timeout, sock_read=read_timeout
        )
        self._shutdown_timeout = shutdown_timeout
        self._prefix = f"/{self.secret}"
        self._lock = threading.Lock()
        self._context: Any = None
        self._closing = False
        self._port = port
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.ServerRunner | None = None
        self._session: aiohttp.ClientSession | None = None

    # --- what the caller sees ---------------------------------------------------------

    @property
    def port(self) -> int:
        if self._sock is None:
            raise GatewayError("the gateway is not started")
        return int(self._sock.getsockname()[1])

    @property
    def url(self) -> str:
        """The gateway's root, secret included: ``http://127.0.0.1:PORT/SECRET``."""
        return f"http://127.0.0.1:{self.port}{self._prefix}"

    @property
    def base_url(self) -> str:
        """What the agent's base-URL setting should say (OpenAI's includes ``/v1``)."""
        return self.url + BASE_PATH[self.provider]

    @property
    def context(self) -> Any:
        with self._lock:
            return self._context

    def set_context(self, context: Any) -> None:
        """The opaque value (command key, attempt) every later call record carries."""
        with self._lock:
            self._context = context

    # --- lifecycle --------------------------------------------------------------------

    def start(self) -> Gateway:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("127.0.0.1", self._port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError as e:
            sock.close()
            raise GatewayError(
                f"cannot serve the model gateway on 127.0.0.1:{self._port}: {e.strerror}"
            ) from None
        self._sock = sock
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve(sock))
        except BaseException:
            loop.close()
            sock.close()
            raise
        self._thread = threading.Thread(
            target=loop.run_forever, name=f"lorch-gateway-{self.provider}", daemon=True
        )
        self._thread.start()
        return self

    async def _serve(self, sock: socket.socket) -> None:
        asyncio.get_running_loop().set_exception_handler(self._on_loop_error)
        server = web.Server(
            self._handle,
            keepalive_timeout=self._header_timeout,
            access_log=None,
            logger=_QUIET,
        )
        self._runner = web.ServerRunner(server, shutdown_timeout=self._shutdown_timeout)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._session = aiohttp.ClientSession(
            timeout=self._client_timeout, trust_env=False, auto_decompress=True
        )

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        # Kept, not printed (lorch's terminal is not the agent's to write on); bounded.
        if len(self.failures) < 100:
            self.failures.append(f"gateway loop: {context.get('message', 'error')}")

    def stop(self) -> None:
        """Close every connection and the upstream session; calls in flight are cut."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._closing = True
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            future.result(timeout=self._shutdown_timeout + 10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()
        self._loop = self._thread = None
        if self._sock is not None:
            self._sock.close()

    async def _shutdown(self) -> None:
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- one request ------------------------------------------------------------------

    def _route(self, raw_path: str) -> tuple[str, str] | None:
        """(path, query) behind the secret; None when the request does not carry it."""
        target, _, query = raw_path.partition("?")
        head, sep, rest = target[1:].partition("/")
        if not hmac.compare_digest(("/" + head).encode(), self._prefix.encode()):
            return None
        return "/" + rest if sep else "/", query

    def _error(self, status: int, message: str, *, close: bool = False) -> web.Response:
        response = web.json_response(error_body(self.provider, status, message), status=status)
        if close:
            response.force_close()
        return response

    async def _read_body(self, request: web.BaseRequest) -> bytes | web.Response:
        length = request.content_length
        too_big = f"request body over the gateway's limit of {self._max_body} bytes"
        if length is not None and length > self._max_body:
            return self._error(413, too_big, close=True)
        body = bytearray()
        try:
            async with asyncio.timeout(self._body_timeout):
                async for piece in request.content.iter_any():
                    body += piece
                    if len(body) > self._max_body:
                        return self._error(413, too_big, close=True)
        except TimeoutError:
            msg = f"request body not received within {self._body_timeout:g}s"
            return self._error(408, msg, close=True)
        except (aiohttp.ClientError, ConnectionError, web.HTTPException) as e:
            return self._error(400, f"unreadable request body: {type(e).__name__}", close=True)
        return bytes(body)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        started = time.monotonic()
        route = self._route(request.raw_path)
        if route is None:
            # Nothing about the gateway is shown to a client without the secret.
            return web.Response(status=404, text="not found\n")
        path, query = route
        body = await self._read_body(request)
        if isinstance(body, web.Response):
            return body
        context = self.context
        decoded = decode_json(body)
        call = classify(self.provider, request.method, path, decoded if is_json(decoded) else None)
        params = parse_qsl(query, keep_blank_values=True)
        # Normalizing walks every string of the conversation: only worth it when a
        # recording is kept or consulted (metering alone needs no fingerprint).
        normalized: dict[str, Any] = {}
        print_ = None
        if self._cassette is not None or self._replay is not None:
            normalized = self.normalizer.request(
                request.method, path, params, request.headers, body, decoded
            )
            print_ = fingerprint(normalized)
        base = {
            "provider": self.provider,
            "model_call": call.model_call,
            "model": call.model,
            "method": request.method,
            "path": path,
            "stream": call.stream,
            "fingerprint": print_,
            "context": context,
        }
        if self._replay is not None and print_ is not None:
            recorded = self._replay.answer(print_)
            if recorded is not None:
                return await self._from_record(request, recorded, base, started)
            if self._replay.strict:
                reason = (
                    f"lorch replay: no recording for {request.method} {path} "
                    f"(context {json.dumps(context)}): {self._replay.miss(normalized)}"
                )
                self.refusals.append(reason)
                self._report(call, base, started, status=400, outcome="refused", source="gateway")
                return self._error(400, reason)
        keys = _keys(request, params)
        return await self._forward(
            request, path, query, body, call, normalized, base, keys, started
        )

    async def _forward(
        self,
        request: web.BaseRequest,
        path: str,
        query: str,
        body: bytes,
        call: Call,
        normalized: dict[str, Any],
        base: dict[str, Any],
        keys: list[str],
        started: float,
    ) -> web.StreamResponse:
        assert self._session is not None  # set up before the first request is served
        target = URL(self.upstream + path + (f"?{query}" if query else ""), encoded=True)
        dropped_names = HOP_BY_HOP | {
            h.strip().lower() for h in request.headers.get("Connection", "").split(",")
        }
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in dropped_names]
        headers.append(("Accept-Encoding", "identity"))
        try:
            upstream = await self._session.request(
                request.method,
                target,
                data=body if body else None,
                headers=headers,
                allow_redirects=False,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as e:
            self._report(call, base, started, status=502, outcome="unreachable", source="gateway")
            return self._error(502, f"lorch gateway: upstream unreachable ({type(e).__name__})")
        async with upstream:
            out = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            kept = [
                (k, v) for k, v in upstream.headers.items() if k.lower() not in RESPONSE_DROPPED
            ]
            for k, v in kept:
                out.headers.add(k, v)
            event_stream = upstream.content_type == "text/event-stream"
            meter = Meter(self.provider, event_stream=event_stream)
            keep = self._cassette is not None
            chunks: list[bytes] = []
            pending = b""  # the last byte held back until the call is durable
            first_byte: float | None = None
            client_gone = not await _prepare(out, request)
            dropped = False
            try:
                async for data in upstream.content.iter_any():
                    if first_byte is None:
                        first_byte = time.monotonic()
                    meter.feed(data)
                    if keep:
                        chunks.append(data)
                    if client_gone:
                        continue  # read on: the answer is paid for, so it is recorded
                    if not event_stream or meter.terminal:
                        data, pending = pending + data[:-1], data[-1:]
                    else:
                        data, pending = pending + data, b""
                    if data:
                        client_gone = not await _write(out, data)
            except (aiohttp.ClientError, TimeoutError, OSError):
                dropped = True
            usage = meter.finish()
            if self._cassette is not None and not self._closing:
                recorded = Recorded(
                    provider=self.provider,
                    fingerprint=base["fingerprint"],
                    model_call=call.model_call,
                    request=normalized,
                    status=upstream.status,
                    headers=tuple(kept),
                    chunks=tuple(chunks),
                    outcome="dropped" if dropped else "complete",
                    model=meter.model or call.model,
                    usage=usage.as_dict() if call.model_call else None,
                    context=base["context"],
                )
                await self._append(recorded, keys)
            # Reported before the last byte goes: once the agent has its answer, so has the run.
            self._report(
                call,
                base,
                started,
                status=upstream.status,
                outcome="dropped" if dropped else "client_gone" if client_gone else "complete",
                source="upstream",
                usage=usage,
                model=meter.model,
                first_byte=first_byte,
            )
        if not client_gone:
            if pending:
                client_gone = not await _write(out, pending)
            if dropped:
                _abort(request)
            elif not client_gone:
                with contextlib.suppress(ConnectionError):
                    await out.write_eof()
        return out

    async def _append(self, recorded: Recorded, keys: list[str]) -> None:
        assert self._cassette is not None
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(None, self._cassette.append, recorded, keys)
        except LorchError as e:
            # The answer still reaches the agent; the run is told it was not kept.
            self.failures.append(str(e))

    async def _from_record(
        self, request: web.BaseRequest, recorded: Recorded, base: dict[str, Any], started: float
    ) -> web.StreamResponse:
        out = web.StreamResponse(status=recorded.status)
        for k, v in recorded.headers:
            if k.lower() not in RESPONSE_DROPPED:
                out.headers.add(k, v)
        ok = await _prepare(out, request)
        first_byte = time.monotonic()
        chunks = list(recorded.chunks)
        # As live: the call is reported before the answer's last byte goes.
        last = b""
        if chunks and chunks[-1]:
            final = chunks.pop()
            last = final[-1:]
            if final[:-1]:
                chunks.append(final[:-1])
        for chunk in chunks:
            if not ok:
                break
            ok = await _write(out, chunk)
        call = Call(recorded.model_call, base["model"], base["stream"])
        self._report(
            call,
            base,
            started,
            status=recorded.status,
            outcome=recorded.outcome if ok else "client_gone",
            source="replay",
            usage=_usage_of(recorded.usage),
            model=recorded.model,
            first_byte=first_byte,
        )
        if ok and last:
            ok = await _write(out, last)
        if recorded.outcome == "dropped":
            _abort(request)
        elif ok:
            with contextlib.suppress(ConnectionError):
                await out.write_eof()
        return out

    def _report(
        self,
        call: Call,
        base: dict[str, Any],
        started: float,
        *,
        status: int,
        outcome: str,
        source: str,
        usage: Usage | None = None,
        model: str | None = None,
        first_byte: float | None = None,
    ) -> None:
        if not call.model_call or self._on_call is None:
            return
        rec = record(base, started, status, outcome, source, usage, model, first_byte)
        try:
            self._on_call(rec)
        except Exception as e:  # the caller's bug must not take the gateway down
            self.failures.append(f"on_call raised {type(e).__name__}: {e}")


def record(
    base: dict[str, Any],
    started: float,
    status: int,
    outcome: str,
    source: str,
    usage: Usage | None,
    model: str | None,
    first_byte: float | None,
) -> dict[str, Any]:
    """The call record ``on_call`` gets: who asked, what it cost, how it went.

    ``outcome``: ``complete``; ``dropped`` (the upstream cut the answer);
    ``client_gone`` (the agent left mid-answer; the upstream's answer was read
    to its end and recorded all the same); ``unreachable`` (no upstream answer:
    the agent got a 502); ``refused`` (strict replay had no recording).
    ``source``: ``upstream``, ``replay`` (no upstream call was made) or
    ``gateway`` (the gateway answered itself).
    """
    u = usage or Usage()
    now = time.monotonic()
    return {
        **{k: base[k] for k in ("provider", "method", "path", "stream", "fingerprint", "context")},
        "model": model or base["model"],
        "status": status,
        "outcome": outcome,
        "source": source,
        "input_tokens": u.input_tokens,
        "output_tokens": u.output_tokens,
        "cache_read_tokens": u.cache_read_tokens,
        "cache_write_tokens": u.cache_write_tokens,
        "usage": u.raw,
        "latency_ms": round((now - started) * 1000, 3),
        "first_byte_ms": None if first_byte is None else round((first_byte - started) * 1000, 3),
    }


def _usage_of(value: dict[str, Any] | None) -> Usage:
    if not isinstance(value, dict):
        return Usage()

    def num(key: str) -> int | None:
        v = value.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) else None

    raw = value.get("raw")
    return Usage(
        num("input_tokens"),
        num("output_tokens"),
        num("cache_read_tokens"),
        num("cache_write_tokens"),
        raw if isinstance(raw, dict) else {},
    )


def _keys(request: web.BaseRequest, params: list[tuple[str, str]]) -> list[str]:
    """The credentials a request carries, to be redacted from what is written."""
    found = []
    for name in KEY_HEADERS:
        for value in request.headers.getall(name, []):
            found.append(value)
            scheme, _, token = value.partition(" ")
            if token and scheme.lower() in ("bearer", "basic", "token"):
                found.append(token.strip())
    found += [v for k, v in params if k in KEY_PARAMS]
    return [v for v in found if len(v) >= 4]


async def _prepare(out: web.StreamResponse, request: web.BaseRequest) -> bool:
    try:
        await out.prepare(request)
    except (ConnectionError, RuntimeError):
        return False
    return True


async def _write(out: web.StreamResponse, data: bytes) -> bool:
    """Write ``data`` to the client; False once the client has gone."""
    try:
        await out.write(data)
    except (ConnectionError, RuntimeError):
        return False
    return True


def _abort(request: web.BaseRequest) -> None:
    """Cut the client's connection: the upstream cut its answer, so the agent sees a cut."""
    transport = request.transport
    if transport is not None:
        transport.abort()
