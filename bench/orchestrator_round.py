"""Per-round overhead: a reviewer requests changes N times (200), zero delays, fsync on.

A round is implement_changes -> builder.completed, review -> review.completed.
Prints, per round:
- the wall time of the whole round under lorch (lorch + the two mock agents);
- the agents' own time: the very same commands, sent straight to fresh mock
  agents by a bare driver (pipe round trips and the agents' work, no lorch);
- lorch's overhead = the difference, beside its floor measured in the same run:
  the fsyncs lorch makes per round (counted in-process; DESIGN.md 5.1 and 5.7
  require them) times the cost of one fsync on this disk.
Goal: overhead <= 2 ms per round and <= 2x the floor (docs/decisions.md, D13).
Run: python bench/orchestrator_round.py [--quick]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bytecode import compile_packages
from _workspace import loop_workspace

from lorch import ledger, protocol
from lorch.config import load
from lorch.runner import Console, resolve_argv, run


def fsync_cost(tmp: Path, n: int = 300) -> float:
    fd = os.open(tmp / "f", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    t0 = time.perf_counter()
    for _ in range(n):
        os.write(fd, b"x" * 300 + b"\n")
        os.fsync(fd)
    os.close(fd)
    return (time.perf_counter() - t0) / n


def pipe_round_trip(n: int = 500) -> float:
    p = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys\nfor l in sys.stdin: sys.stdout.write(l); sys.stdout.flush()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert p.stdin is not None and p.stdout is not None
    t0 = time.perf_counter()
    for _ in range(n):
        p.stdin.write(b"x" * 300 + b"\n")
        p.stdin.flush()
        p.stdout.readline()
    dt = (time.perf_counter() - t0) / n
    p.stdin.close()
    p.wait()
    p.stdout.close()
    return dt


def agents_only(ws: Path, tmp: Path, rounds: int) -> float:
    """Send the commands lorch sent in ``ws`` straight to fresh agents; return seconds."""
    commands = [
        r for p in ws.glob("events/*.ndjson") for r in ledger.read(p) if r["kind"] == "command"
    ]
    fresh = tmp / f"direct-{rounds}"
    loop_workspace(fresh, rounds)
    config = load(fresh)
    procs = {}
    for role, cfg in config.agents.items():
        env = {**os.environ, "LORCH_WORKSPACE": str(fresh), "LORCH_ROLE": role}
        procs[role] = subprocess.Popen(
            resolve_argv(role, cfg.cmd, fresh),
            cwd=fresh,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
    t0 = time.perf_counter()
    for cmd in commands:
        p = procs[cmd["to"]["agent_type"]]
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(protocol.encode(cmd))
        p.stdin.flush()
        while True:
            msg = json.loads(p.stdout.readline())
            if msg.get("event") in protocol.TERMINAL_EVENTS:
                break
    dt = time.perf_counter() - t0
    for p in procs.values():
        assert p.stdin is not None and p.stdout is not None
        p.stdin.close()
        p.wait()
        p.stdout.close()
    return dt


def measure(rounds: int, tmp: Path) -> tuple[float, int, float]:
    ws = tmp / f"ws-{rounds}"
    loop_workspace(ws, rounds)
    calls = 0
    real = os.fsync

    def counting(fd: int) -> None:
        nonlocal calls
        calls += 1
        real(fd)

    os.fsync = counting  # type: ignore[assignment]
    try:
        with open(os.devnull, "w") as sink:
            t0 = time.perf_counter()
            outcome = run(ws, console=Console(out=sink, color=False))
            dt = time.perf_counter() - t0
    finally:
        os.fsync = real  # type: ignore[assignment]
    assert outcome.status == "completed", outcome
    return dt, calls, agents_only(ws, tmp, rounds)


def main() -> None:
    compile_packages()
    n = 40 if "--quick" in sys.argv else 200
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as t:
        tmp = Path(t)
        base, base_fsyncs, base_agents = measure(2, tmp)
        full, full_fsyncs, full_agents = measure(n + 2, tmp)
        per_round = (full - base) / n
        agents = (full_agents - base_agents) / n
        overhead = per_round - agents
        lorch_fsyncs = (full_fsyncs - base_fsyncs) / n
        fs = fsync_cost(tmp)
        rt = pipe_round_trip()
    floor = lorch_fsyncs * fs
    print(f"rounds: {n} (changes requested each time), fsync on")
    print(f"round under lorch: {per_round * 1000:.2f} ms")
    print(
        f"agents alone (same commands, bare driver): {agents * 1000:.2f} ms "
        f"(pipe round trip {rt * 1000:.3f} ms)"
    )
    print(f"lorch overhead per round: {overhead * 1000:.2f} ms (goal <= 2 ms)")
    print(f"floor: {floor * 1000:.2f} ms = {lorch_fsyncs:.1f} lorch fsyncs x {fs * 1000:.3f} ms")
    print(f"ratio to floor: {overhead / floor:.2f} (goal <= 2)")


if __name__ == "__main__":
    main()
