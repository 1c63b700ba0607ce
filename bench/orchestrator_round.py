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

import itertools
import json
import os
import statistics
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
from lorch.runner import Console, Runner, resolve_argv, run
from lorch.workflow import Send


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


def round_times(stamps: list[float]) -> list[float]:
    """Durations of the rounds between consecutive review commands."""
    return [b - a for a, b in itertools.pairwise(stamps)]


def agents_only(ws: Path, tmp: Path, trial: int) -> list[float]:
    """Send the commands lorch sent in ``ws`` straight to fresh agents; time each round."""
    commands = [
        r for p in ws.glob("events/*.ndjson") for r in ledger.read(p) if r["kind"] == "command"
    ]
    fresh = tmp / f"direct-{trial}"
    rounds = sum(c["action"] == "review" for c in commands) - 1
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
    stamps = []
    for cmd in commands:
        if cmd["action"] == "review":
            stamps.append(time.perf_counter())
        p = procs[cmd["to"]["agent_type"]]
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(protocol.encode(cmd))
        p.stdin.flush()
        while True:
            msg = json.loads(p.stdout.readline())
            if msg.get("event") in protocol.TERMINAL_EVENTS:
                break
    for p in procs.values():
        assert p.stdin is not None and p.stdout is not None
        p.stdin.close()
        p.wait()
        p.stdout.close()
    return round_times(stamps)


def under_lorch(rounds: int, tmp: Path, trial: int) -> tuple[Path, list[float], float, float]:
    """Run the loop under lorch; time each round; count and time lorch's fsyncs per round."""
    ws = tmp / f"ws-{trial}"
    loop_workspace(ws, rounds)
    calls = 0
    spent = 0.0
    real_fsync, real_send = os.fsync, Runner.send
    stamps: list[float] = []

    def counting(fd: int) -> None:
        nonlocal calls, spent
        calls += 1
        t0 = time.perf_counter()
        real_fsync(fd)
        spent += time.perf_counter() - t0

    def stamped(self: Runner, step: Send) -> None:
        if step.command["action"] == "review":
            stamps.append(time.perf_counter())
        real_send(self, step)

    os.fsync = counting  # type: ignore[assignment]
    Runner.send = stamped  # type: ignore[method-assign]
    try:
        with open(os.devnull, "w") as sink:
            outcome = run(ws, console=Console(out=sink, color=False))
    finally:
        os.fsync = real_fsync  # type: ignore[assignment]
        Runner.send = real_send  # type: ignore[method-assign]
    assert outcome.status == "completed", outcome
    return ws, round_times(stamps), calls / rounds, spent / calls


def main() -> None:
    compile_packages()
    n = 40 if "--quick" in sys.argv else 200
    trials = 1 if "--quick" in sys.argv else 3
    lorch_rounds: list[float] = []
    direct_rounds: list[float] = []
    fsyncs = []
    in_run = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as t:
        tmp = Path(t)
        for trial in range(trials):  # interleaved, so a slow spell of the disk hits both
            ws, times, per_round, each = under_lorch(n, tmp, trial)
            lorch_rounds += times
            fsyncs.append(per_round)
            in_run.append(each)
            direct_rounds += agents_only(ws, tmp, trial)
        fs = fsync_cost(tmp)
        rt = pipe_round_trip()
    per_round = statistics.median(lorch_rounds)
    agents = statistics.median(direct_rounds)
    overhead = per_round - agents
    lorch_fsyncs = statistics.median(fsyncs)
    floor = lorch_fsyncs * fs
    print(f"rounds: {n} x {trials} trials (changes requested each time), fsync on; medians")
    print(f"round under lorch: {per_round * 1000:.2f} ms")
    print(
        f"agents alone (same commands, bare driver): {agents * 1000:.2f} ms "
        f"(pipe round trip {rt * 1000:.3f} ms)"
    )
    print(f"lorch overhead per round: {overhead * 1000:.2f} ms (goal <= 2 ms)")
    print(f"floor: {floor * 1000:.2f} ms = {lorch_fsyncs:.1f} lorch fsyncs x {fs * 1000:.3f} ms")
    print(f"ratio to floor: {overhead / floor:.2f} (goal <= 2)")
    print(
        f"(for reference: lorch's fsyncs took {statistics.median(in_run) * 1000:.3f} ms each "
        f"during the runs, beside the agents' own, against {fs * 1000:.3f} ms alone)"
    )


if __name__ == "__main__":
    main()
