"""lorch's overhead per ACP turn, against the scripted ACP agent (tests/agents/acp_agent.py).

The same agent and the same turn (a message, a file written through
fs/write_text_file, a tool call) are driven two ways:

- bare: a minimal client on the ACP SDK (session/new + session/prompt, fs write
  served, nothing recorded) — the agent's own time plus the protocol;
- lorch: lorch's ACP port (prompt rendered, permission and fs rules, updates
  turned into log events, the terminal event built with the changed files
  hashed), handed to the engine's inbox; with and without the workspace
  checkpoints of each turn.

lorch's overhead per turn = median(lorch) - median(bare). Goal: <= 5 ms.
Run: python bench/acp_turn_overhead.py [--turns N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import acp as sdk
from acp import schema as s

from lorch import protocol
from lorch.acp import AcpPort, AcpSettings
from lorch.checkpoint import Checkpoints
from lorch.launch import acp_base_env
from lorch.redact import Redactor
from lorch.transport import Inbox, Launch, SendContext

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "tests" / "agents" / "acp_agent.py"
TURN = [
    {"text": "Writing it."},
    {"write": "src/out.py", "content": "x = 1\n", "via": "fs"},
    {"text": "Done."},
]


def command(i: int) -> dict[str, Any]:
    return {
        "kind": "command",
        "message_id": f"cmd-{i}",
        "correlation_id": f"corr-T-1-{i}",
        "task_id": "T-1",
        "idempotency_key": "ik:" + f"{i:064x}",
        "to": {"agent_type": "builder"},
        "action": "implement",
        "inputs": {"round": i},
        "expected_outputs": [],
        "version": {"snapshot_id": "snap-0123456789ab"},
        "deadline": "2030-01-01T00:00:00Z",
        "retry": {"attempt": 0, "max_attempts": 3},
        "priority": 5,
    }


class BareClient:
    def __init__(self, ws: Path) -> None:
        self.ws = ws

    async def session_update(self, session_id: str, update: Any, **kw: Any) -> None:
        return None

    async def write_text_file(
        self, session_id: str, path: str, content: str, **kw: Any
    ) -> s.WriteTextFileResponse:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(content)
        return s.WriteTextFileResponse()

    async def request_permission(self, *a: Any, **kw: Any) -> Any:
        raise sdk.RequestError.method_not_found("session/request_permission")

    def on_connect(self, conn: Any) -> None:
        pass


async def bare(script: Path, ws: Path, turns: int) -> list[float]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(AGENT),
        str(script),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        cwd=str(ws),
        limit=1 << 24,
    )
    conn = sdk.connect_to_agent(BareClient(ws), proc.stdin, proc.stdout)  # type: ignore[arg-type]
    await conn.initialize(
        protocol_version=sdk.PROTOCOL_VERSION,
        client_capabilities=s.ClientCapabilities(
            fs=s.FileSystemCapabilities(read_text_file=True, write_text_file=True)
        ),
    )
    times = []
    for i in range(turns):
        t0 = time.perf_counter()
        sess = await conn.new_session(cwd=str(ws), mcp_servers=[])
        await conn.prompt(
            session_id=sess.session_id, prompt=[sdk.text_block(f"turn {i} for task T-1.")]
        )
        times.append(time.perf_counter() - t0)
    await conn.close()
    proc.kill()
    await proc.wait()
    return times


def with_lorch(script: Path, ws: Path, turns: int, checkpoints: bool) -> list[float]:
    ck = Checkpoints(ws, ws.parent / f"ck-{checkpoints}.git", durable=True)
    inbox = Inbox()
    launch = Launch(
        role="builder",
        argv=[sys.executable, str(AGENT), str(script)],
        cwd=ws,
        env=acp_base_env(()),
        log_path=ws / "logs" / "builder" / "bench.ndjson",
        generation=1,
        redactor=Redactor([]),
    )
    settings = AcpSettings(
        workspace=ws,
        task={"id": "T-1", "goal": "bench"},
        take=ck.take if checkpoints else None,
        changed=ck.changed if checkpoints else None,
    )
    port = AcpPort(launch, inbox, settings)
    port.start()
    times = []
    try:
        for i in range(turns):
            cmd = command(i)
            t0 = time.perf_counter()
            port.send(cmd, protocol.encode(cmd), SendContext())
            while True:
                item = inbox.get(10.0)
                assert item is not None and item.kind != "exit", "the agent stopped"
                if item.message is not None and item.message["event"] in protocol.TERMINAL_EVENTS:
                    assert item.message["event"] == "builder.completed", item.message
                    break
            times.append(time.perf_counter() - t0)
    finally:
        port.kill()
        inbox.close()
    return times


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=200)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        script = root / "script.json"
        script.write_text(json.dumps({"turns": [{"calls": [TURN]}]}))
        figures = {}
        for name in ("bare", "lorch", "lorch+checkpoints"):
            ws = root / name
            (ws / "src").mkdir(parents=True)
            for i in range(100):  # a small project: the checkpoints have something to hash
                (ws / "src" / f"m{i}.py").write_text(f"v = {i}\n")
            if name == "bare":
                t = asyncio.run(bare(script, ws, args.turns))
            else:
                t = with_lorch(script, ws, args.turns, checkpoints=name.endswith("checkpoints"))
            figures[name] = statistics.median(t[5:]) * 1000
            print(
                f"{name:>18}: median {figures[name]:.2f} ms per turn over {len(t) - 5} turns "
                f"(p90 {statistics.quantiles(t[5:], n=10)[-1] * 1000:.2f} ms)"
            )
        over = figures["lorch"] - figures["bare"]
        over_ck = figures["lorch+checkpoints"] - figures["bare"]
        print(
            f"lorch's overhead per ACP turn: {over:.2f} ms (goal <= 5 ms); "
            f"with the two checkpoints of each turn: {over_ck:.2f} ms"
        )


if __name__ == "__main__":
    main()
