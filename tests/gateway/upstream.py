"""A programmable upstream for the gateway's tests: each request gets the next scripted reply.

Unlike :mod:`lorch.testing.model_endpoint` (a model that answers a conversation),
this one says exactly which bytes go out in which chunks, can stop before the
last chunk until the test opens a gate, can cut the connection mid-stream, and
keeps every request it received with its headers.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass
class Reply:
    chunks: list[bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    headers: dict[str, str] = field(default_factory=dict)
    drop: bool = False  # cut the connection after the chunks
    gate: threading.Event | None = None  # wait for it before sending the last chunk


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes


def sse(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {json.dumps(data)}\n\n".encode()


def json_reply(body: dict[str, Any], status: int = 200) -> Reply:
    return Reply([json.dumps(body).encode()], status=status, content_type="application/json")


class Upstream:
    """The server, on its own thread; replies are used in order (the last one repeats)."""

    def __init__(self, replies: list[Reply]) -> None:
        self.replies = list(replies)
        self.seen: list[Seen] = []
        self.sent_last = threading.Event()  # the last chunk of a gated reply went out
        self._loop = asyncio.new_event_loop()
        self._runner = self._loop.run_until_complete(self._serve())
        self.port = self._runner.addresses[0][1]
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    async def _serve(self) -> web.ServerRunner:
        runner = web.ServerRunner(web.Server(self._handle), shutdown_timeout=0.5)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        return runner

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        target, _, query = request.raw_path.partition("?")
        self.seen.append(Seen(request.method, target, query, dict(request.headers), body))
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        out = web.StreamResponse(status=reply.status, headers=reply.headers)
        out.content_type = reply.content_type
        await out.prepare(request)
        for i, chunk in enumerate(reply.chunks):
            if reply.gate is not None and i == len(reply.chunks) - 1:
                await asyncio.get_running_loop().run_in_executor(None, reply.gate.wait, 30)
            await out.write(chunk)
        if reply.gate is not None:
            self.sent_last.set()
        if reply.drop:
            assert request.transport is not None
            request.transport.abort()
            return out
        await out.write_eof()
        return out
