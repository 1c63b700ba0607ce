"""Per-round overhead: a reviewer requests changes N times (200), zero delays, fsync on.

A round is implement_changes -> builder.completed, review -> review.completed.
Prints, per round:
- the wall time of the whole round under lorch (lorch + the two mock agents);
- the agents' own time: the very same commands, sent straight to fresh mock
  agents by a bare driver (pipe round trips and the agents' work, no lorch);
- lorch's overhead = the difference, beside its floor measured in the same run:
  the fsyncs lorch makes per round (counted in-process; DESIGN.md 5.1 and 5.7
  require them) times the median cost of one required fsync on this disk
  while the same agents work: the bare driver fsyncs each command before it
  sends it, times those fsyncs and leaves them out of the agents' time. A quiet
  disk's fsync, sampled between the trials, is printed for reference.
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

from lorch.app.config import load
from lorch.app.launch import resolve_argv
from lorch.app.runner import Console, run
from lorch.core.steps import Send
from lorch.engine.loop import Engine
from lorch.store import ledger
from lorch.wire import protocol, vocabulary


def fsync_times(tmp: Path, trial: int, n: int = 200) -> list[float]:
    """Durations of single fsyncs of a file growing by ledger-sized lines."""
    fd = os.open(tmp / f"fsync-{trial}", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    times = []
    for _ in range(n):
        os.write(fd, b"x" * 600 + b"\n")
        t0 = time.perf_counter()
        os.fsync(fd)
        times.append(time.perf_counter() - t0)
    os.close(fd)
    return times


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


def agents_only(ws: Path, tmp: Path, trial: int) -> tuple[list[float], list[float]]:
    """Send the commands lorch sent in ``ws`` straight to fresh agents; time each round.

    The bare driver does the one thing lorch must do on the way (DESIGN.md 5.1):
    each command is appended to a file and fsynced before it is sent, the
    answers are appended after it (made durable by the next command's fsync).
    Returns the rounds' times without those fsyncs (the agents' own time and the
    pipe round trips) and the duration of each fsync: what a required fsync
    costs on this disk while these agents work.
    """
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
    log = os.open(fresh / "driver.ndjson", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    stamps: list[float] = []
    synced: list[float] = []  # fsync time spent before each stamp
    fsyncs: list[float] = []
    spent = 0.0
    for cmd in commands:
        line = protocol.encode(cmd)
        if cmd["action"] == "review":
            stamps.append(time.perf_counter())
            synced.append(spent)
        os.write(log, line)
        t0 = time.perf_counter()
        os.fsync(log)
        fsyncs.append(time.perf_counter() - t0)
        spent += fsyncs[-1]
        p = procs[cmd["to"]["agent_type"]]
        assert p.stdin is not None and p.stdout is not None
        p.stdin.write(line)
        p.stdin.flush()
        while True:
            raw = p.stdout.readline()
            msg = json.loads(raw)
            if msg.get("kind") == "event":
                os.write(log, raw)
                if msg.get("event") in vocabulary.TERMINAL_EVENTS:
                    break
    os.close(log)
    for p in procs.values():
        assert p.stdin is not None and p.stdout is not None
        p.stdin.close()
        p.wait()
        p.stdout.close()
    own = [t - f for t, f in zip(round_times(stamps), round_times(synced), strict=True)]
    return own, fsyncs


def under_lorch(rounds: int, tmp: Path, trial: int) -> tuple[Path, list[float], float, float]:
    """Run the loop under lorch; time each round; count and time lorch's fsyncs per round."""
    ws = tmp / f"ws-{trial}"
    loop_workspace(ws, rounds)
    calls = 0
    spent = 0.0
    real_fsync, real_send = os.fsync, Engine.send
    stamps: list[float] = []

    def counting(fd: int) -> None:
        nonlocal calls, spent
        calls += 1
        t0 = time.perf_counter()
        real_fsync(fd)
        spent += time.perf_counter() - t0

    def stamped(self: Engine, step: Send) -> None:
        if step.command["action"] == "review":
            stamps.append(time.perf_counter())
        real_send(self, step)

    os.fsync = counting  # type: ignore[assignment]
    Engine.send = stamped  # type: ignore[method-assign]
    try:
        with open(os.devnull, "w") as sink:
            outcome = run(ws, console=Console(out=sink, color=False))
    finally:
        os.fsync = real_fsync  # type: ignore[assignment]
        Engine.send = real_send  # type: ignore[method-assign]
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
    in_situ: list[float] = []
    alone: list[float] = []
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as t:
        tmp = Path(t)
        # Interleaved, so that a slow spell of the disk hits every measure.
        for trial in range(trials):
            ws, times, per_round, each = under_lorch(n, tmp, trial)
            lorch_rounds += times
            fsyncs.append(per_round)
            in_run.append(each)
            alone += fsync_times(tmp, trial)
            own, synced = agents_only(ws, tmp, trial)
            direct_rounds += own
            in_situ += synced
        rt = pipe_round_trip()
    per_round = statistics.median(lorch_rounds)
    agents = statistics.median(direct_rounds)
    overhead = per_round - agents
    lorch_fsyncs = statistics.median(fsyncs)
    fs = statistics.median(in_situ)
    quiet = statistics.median(alone)
    floor = lorch_fsyncs * fs
    print(f"rounds: {n} x {trials} trials (changes requested each time), fsync on; medians")
    print(f"round under lorch: {per_round * 1000:.2f} ms")
    print(
        f"agents alone (same commands, bare driver, its fsyncs taken out): {agents * 1000:.2f} ms "
        f"(pipe round trip {rt * 1000:.3f} ms)"
    )
    print(f"lorch overhead per round: {overhead * 1000:.2f} ms (goal <= 2 ms)")
    print(
        f"floor: {floor * 1000:.2f} ms = {lorch_fsyncs:.1f} lorch fsyncs x {fs * 1000:.3f} ms "
        "(one fsync before each command, timed in the bare driver beside the same agents)"
    )
    print(f"ratio to floor: {overhead / floor:.2f} (goal <= 2)")
    print(
        f"(for reference: lorch's fsyncs took {statistics.median(in_run) * 1000:.3f} ms each "
        f"during its runs; on a quiet disk one takes {quiet * 1000:.3f} ms, "
        f"a floor of {lorch_fsyncs * quiet * 1000:.2f} ms and a ratio of "
        f"{overhead / (lorch_fsyncs * quiet):.2f})"
    )


if __name__ == "__main__":
    main()
