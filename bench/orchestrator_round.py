"""Per-round overhead: a reviewer requests changes N times (200), zero delays, fsync on.

Prints ms per round beside a floor measured in the same run: the fsyncs a round
needs (lorch's own, counted in-process, plus the mock agents' 6 per command) and
two pipe round trips. Goal: <= 2 ms per round and <= 2x the floor.
Run: python bench/orchestrator_round.py [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _workspace import loop_workspace

from lorch.runner import Console, run

AGENT_FSYNCS_PER_COMMAND = 6  # journal x2, cache file + dir, artifact file + dir


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


def measure(rounds: int, tmp: Path) -> tuple[float, int]:
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
    return dt, calls


def main() -> None:
    n = 40 if "--quick" in sys.argv else 200
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as t:
        tmp = Path(t)
        base, base_fsyncs = measure(2, tmp)
        full, full_fsyncs = measure(n + 2, tmp)
        per_round = (full - base) / n
        lorch_fsyncs = (full_fsyncs - base_fsyncs) / n
        fs = fsync_cost(tmp)
        rt = pipe_round_trip()
    floor = (lorch_fsyncs + 2 * AGENT_FSYNCS_PER_COMMAND) * fs + 2 * rt
    print(f"rounds: {n} (changes requested each time), fsync on")
    print(f"per round: {per_round * 1000:.2f} ms (goal <= 2 ms)")
    print(
        f"floor: {floor * 1000:.2f} ms = ({lorch_fsyncs:.1f} lorch + {2 * AGENT_FSYNCS_PER_COMMAND} agent fsyncs) "
        f"x {fs * 1000:.3f} ms + 2 pipe round trips x {rt * 1000:.3f} ms"
    )
    print(f"ratio to floor: {per_round / floor:.2f} (goal <= 2)")


if __name__ == "__main__":
    main()
