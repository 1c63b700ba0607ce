"""mockagent: start to first heartbeat (median), and answer latency over 10,000 commands.

Goals: <= 100 ms to first heartbeat; <= 1 ms per command (median) with zero delay.
Run: python bench/mockagent_latency.py [--quick]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lorch.wire.canonical import idempotency_key

sys.path.insert(0, str(Path(__file__).parent))
from _bytecode import compile_packages

MOCK = str(Path(sys.executable).parent / "mockagent")


def command(i: int) -> bytes:
    inputs = {"round": i}
    return (
        json.dumps(
            {
                "kind": "command",
                "message_id": f"cmd-{i}",
                "correlation_id": f"c{i}",
                "task_id": "T-1",
                "idempotency_key": idempotency_key(
                    "review", "T-1", "snap-0123456789ab", inputs, []
                ),
                "to": {"agent_type": "reviewer"},
                "action": "review",
                "inputs": inputs,
                "version": {"snapshot_id": "snap-0123456789ab"},
                "deadline": "2030-01-01T00:00:00Z",
                "retry": {"attempt": 0, "max_attempts": 3},
                "priority": 5,
            }
        ).encode()
        + b"\n"
    )


def startup(ws: Path, runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        p = subprocess.Popen(
            [MOCK, "--type", "reviewer", "--workspace", str(ws)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        assert p.stdout is not None and p.stdin is not None
        p.stdout.readline()
        times.append((time.perf_counter() - t0) * 1000)
        p.stdin.close()
        p.wait()
        p.stdout.close()
    return times


def latency(ws: Path, n: int) -> list[float]:
    fx = ws / "fx.json"
    fx.write_text(
        json.dumps(
            {
                "responses": {
                    "review": {"events": [{"type": "review.completed", "status": "approved"}]}
                }
            }
        )
    )
    p = subprocess.Popen(
        [MOCK, "--type", "reviewer", "--workspace", str(ws), "--no-heartbeat", "--script", str(fx)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert p.stdout is not None and p.stdin is not None
    times = []
    for i in range(n):
        line = command(i)
        t0 = time.perf_counter()
        p.stdin.write(line)
        p.stdin.flush()
        while b"review.completed" not in p.stdout.readline():
            pass
        times.append((time.perf_counter() - t0) * 1000)
    p.stdin.close()
    p.wait()
    p.stdout.close()
    return times


def main() -> None:
    compile_packages()
    quick = "--quick" in sys.argv
    with tempfile.TemporaryDirectory() as tmp:
        s = startup(Path(tmp), 10 if quick else 30)
        lat = latency(Path(tmp), 1000 if quick else 10_000)
    print(
        f"start to first heartbeat: median {statistics.median(s):.1f} ms over {len(s)} starts (goal <= 100 ms)"
    )
    print(
        f"answer latency: median {statistics.median(lat):.3f} ms, p95 {sorted(lat)[int(len(lat) * 0.95)]:.3f} ms "
        f"over {len(lat):,} commands (goal <= 1 ms median; includes one journal fsync per command: the journal is the cache)"
    )


if __name__ == "__main__":
    main()
