"""lorch's overhead per ACP turn, against the scripted ACP agent (tests/agents/acp_agent.py).

The same agent and the same turn (a message, a file written through
fs/write_text_file, a tool call) are driven two ways:

- bare: a minimal client on the ACP SDK (session/new + session/prompt, fs write
  served, nothing recorded) — the agent's own time plus the protocol;
- lorch: lorch's ACP port (prompt rendered, permission and fs rules, updates
  turned into log events, the terminal event built with the changed files
  hashed), handed to the engine's inbox; with and without the workspace
  checkpoint of each turn. With checkpoints the port is driven as the engine
  drives it in a steady run: each command's pre checkpoint is the previous
  turn's post checkpoint (docs/decisions.md D37), so each turn costs one
  checkpoint, at its end.

lorch's overhead per turn = median(lorch) - median(bare). Goal: <= 5 ms.
Run: python bench/acp_turn_overhead.py [--turns N] [--rounds R]  (R runs, each figure's range)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import acp as sdk
from acp import schema as s

from lorch.agents.acp.host import AcpSettings
from lorch.agents.acp.port import AcpPort
from lorch.agents.transport import Inbox, Launch, SendContext
from lorch.app.launch import acp_base_env
from lorch.store.checkpoint import Checkpoints
from lorch.wire import protocol, vocabulary
from lorch.wire.redact import Redactor

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
    tree = ck.take() if checkpoints else None
    try:
        for i in range(turns):
            cmd = command(i)
            t0 = time.perf_counter()
            port.send(cmd, protocol.encode(cmd), SendContext(checkpoint=tree))
            while True:
                item = inbox.get(10.0)
                assert item is not None and item.kind != "exit", "the agent stopped"
                if item.message is not None and item.message["event"] in vocabulary.TERMINAL_EVENTS:
                    assert item.message["event"] == "builder.completed", item.message
                    if checkpoints:
                        assert item.checkpoint is not None
                        tree = item.checkpoint.tree
                    break
            times.append(time.perf_counter() - t0)
    finally:
        port.kill()
        inbox.close()
    return times


def one_round(turns: int) -> dict[str, float]:
    """Median ms per turn of each way, in one set of fresh workspaces."""
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
                t = asyncio.run(bare(script, ws, turns))
            else:
                t = with_lorch(script, ws, turns, checkpoints=name.endswith("checkpoints"))
            figures[name] = statistics.median(t[5:]) * 1000
            figures[name + " p90"] = statistics.quantiles(t[5:], n=10)[-1] * 1000
        return figures


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(
        f"{args.turns} turns per way, {args.rounds} rounds, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores"
    )
    overs: list[float] = []
    overs_ck: list[float] = []
    for r in range(args.rounds):
        f = one_round(args.turns)
        overs.append(f["lorch"] - f["bare"])
        overs_ck.append(f["lorch+checkpoints"] - f["bare"])
        print(
            f"round {r + 1}: per turn bare {f['bare']:.2f} ms (p90 {f['bare p90']:.2f}), "
            f"lorch {f['lorch']:.2f} ms (p90 {f['lorch p90']:.2f}), "
            f"lorch+checkpoint {f['lorch+checkpoints']:.2f} ms "
            f"(p90 {f['lorch+checkpoints p90']:.2f}); load average {os.getloadavg()[0]:.1f}"
        )

    def rng(xs: list[float]) -> str:
        return f"median {statistics.median(xs):.2f} ms (range {min(xs):.2f}-{max(xs):.2f})"

    print(f"lorch's overhead per ACP turn: {rng(overs)}   goal <= 5 ms")
    print(
        f"with the workspace checkpoint of each turn (100 files): {rng(overs_ck)}   "
        "(no goal: the checkpoint's own cost is bench/checkpoint.py's)"
    )


if __name__ == "__main__":
    main()
