"""The model gateway: added latency to the first streamed byte, and gateway CPU per call.

A local upstream runs as a subprocess: an aiohttp server that streams a Messages
answer as the API does, one write per event (the events of
lorch.testing.model_stream). A client subprocess sends the same streamed request
to it directly and through a Gateway hosted by this process (as lorch hosts it:
the agent is another process), over a keep-alive connection, in alternating
blocks. Printed: the median time to the first byte of the body each way and the
difference; the CPU this process spends per call (the gateway's, since nothing
else runs here meanwhile). Then the same with a
cassette (every call recorded and fsynced before its last byte).

Goals (issue 24): added latency to first streamed byte <= 1 ms median; gateway
CPU per call <= 2 ms.
Run: python bench/gateway.py [--quick]
"""

from __future__ import annotations

import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lorch.engine.gateway.cassette import Cassette
from lorch.engine.gateway.server import Gateway


def body(size: int) -> bytes:
    """A streamed Messages request of about ``size`` bytes (a conversation of many turns)."""
    turns = max(1, size // 2000)
    messages = [
        {"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}: " + "words " * 330}
        for i in range(turns)
    ]
    if len(messages) % 2 == 0:
        messages.append({"role": "user", "content": "go on"})
    return json.dumps(
        {"model": "claude-sonnet-4-5", "max_tokens": 100, "stream": True, "messages": messages}
    ).encode()


def call(conn: http.client.HTTPConnection, path: str, data: bytes) -> float:
    """Seconds to the first body byte of one streamed request (read to its end)."""
    t0 = time.perf_counter()
    conn.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    resp.read1(65536)
    t1 = time.perf_counter()
    resp.read()
    return t1 - t0


def client(port: int, path: str, n: int, size: int) -> None:
    """The client (``bench/gateway.py --client PORT PATH N SIZE``): prints first-byte times."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    data = body(size)
    call(conn, path, data)  # warm up the connection
    print(json.dumps([call(conn, path, data) for _ in range(n)]))


def measure(port: int, path: str, n: int, size: int) -> tuple[list[float], float]:
    """First-byte times of ``n`` calls, and this process's CPU seconds per call meanwhile.

    The client is another process, so the CPU this one spends is the gateway's
    (nil for direct calls, which only the subprocesses see).
    """
    cpu0 = time.process_time()
    done = subprocess.run(
        [sys.executable, __file__, "--client", str(port), path, str(n), str(size)],
        capture_output=True,
        text=True,
        check=True,
    )
    cpu = (time.process_time() - cpu0) / (n + 1)
    return json.loads(done.stdout), cpu


def run(upstream_port: int, gw: Gateway, n: int, rounds: int, size: int, label: str) -> None:
    direct_t: list[float] = []
    via_t: list[float] = []
    via_cpu: list[float] = []
    for _ in range(rounds):
        direct_t += measure(upstream_port, "/v1/messages", n, size)[0]
        t, c = measure(gw.port, f"/{gw.secret}/v1/messages", n, size)
        via_t += t
        via_cpu.append(c)
    d, v = statistics.median(direct_t) * 1e3, statistics.median(via_t) * 1e3
    print(
        f"{label}, {size // 1000} kB requests: first byte direct {d:.3f} ms, via gateway {v:.3f} ms, "
        f"added {v - d:.3f} ms median (goal <= 1 ms); "
        f"gateway CPU per call {statistics.median(via_cpu) * 1e3:.3f} ms (goal <= 2 ms)  "
        f"[{rounds}x{n} calls]"
    )


def serve_upstream() -> None:
    """The upstream (run as ``bench/gateway.py --upstream``): prints its URL, serves forever."""
    import asyncio

    from aiohttp import web

    from lorch.testing import model_stream

    blocks = [{"type": "text", "text": "hello, world. " * 40}]
    events = list(model_stream.events("msg_1", "claude-sonnet-4-5", blocks, "end_turn", 500, 60))

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        out = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await out.prepare(request)
        for event in events:
            await out.write(event)
        await out.write_eof()
        return out

    async def serve() -> None:
        runner = web.ServerRunner(web.Server(handle, access_log=None))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        print(f"http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
        await asyncio.Event().wait()

    asyncio.run(serve())


def main() -> None:
    if "--upstream" in sys.argv:
        serve_upstream()
        return
    if sys.argv[1:2] == ["--client"]:
        client(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    quick = "--quick" in sys.argv
    n, rounds = (50, 2) if quick else (200, 5)
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--upstream"],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            url = proc.stdout.readline().strip()
            port = int(url.rsplit(":", 1)[1])
            for size in (2_000, 300_000):
                with Gateway("anthropic", url) as gw:
                    run(port, gw, n, rounds, size, "metering")
                with (
                    Cassette(Path(tmp, "calls.jsonl")) as cassette,
                    Gateway("anthropic", url, cassette=cassette) as gw,
                ):
                    run(port, gw, n, rounds, size, "metering + recording (fsync per call)")
        finally:
            proc.terminate()
            proc.wait()


if __name__ == "__main__":
    main()
