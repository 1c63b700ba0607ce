"""lorch's start-up: time to first command, and what each entry point imports.

- time to first command: from spawning `lorch run` (one round: implement,
  review, update_spec, by three mock agents with zero delay, fsync on) to the
  first command's line in the ledger, seen through inotify on events/ (the
  time is taken after the line is read back: an upper bound by the bench's own
  wake-up). Also the whole run's wall and CPU (lorch and its agents, os.wait4);
- import time of each entry point, as `python -X importtime` reports it (which
  inflates it a little): `lorch --help`, `lorch run` (the same one-round run)
  and `mockagent` (a plain start, stdin at EOF): the modules imported beyond a
  bare Python and the sum of their import times; and the wall and CPU of
  `lorch --help`.
Medians of N runs.
Goal (issue 26): time to first command <= 3x the Go original's (9-16 ms there).
Run: python bench/orchestrator_startup.py [--quick] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from inotify_simple import INotify, flags

sys.path.insert(0, str(Path(__file__).parent))
from _bytecode import compile_packages
from _workspace import loop_workspace

LORCH = str(Path(sys.executable).parent / "lorch")
MOCK = str(Path(sys.executable).parent / "mockagent")


def _has_command(events: Path) -> bool:
    for path in events.glob("*.ndjson"):
        for line in path.read_bytes().splitlines():
            try:
                if json.loads(line).get("kind") == "command":
                    return True
            except ValueError:
                continue  # a line being written
    return False


def first_command(ws: Path) -> tuple[float, float, float]:
    """(ms to the first command in the ledger, ms the run took, ms of CPU it used)."""
    loop_workspace(ws, 0)
    events = ws / "events"
    ino = INotify()
    ino.add_watch(ws, flags.CREATE)
    watching = False
    seen = None
    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    argv = [LORCH, "run", "--workspace", str(ws)]
    t0 = time.perf_counter()
    pid = os.posix_spawn(LORCH, argv, os.environ, file_actions=devnull)
    try:
        while seen is None:
            woke = ino.read(timeout=1000)
            if not watching and events.is_dir():
                ino.add_watch(events, flags.CREATE | flags.MODIFY)
                watching = True
            if watching and _has_command(events):
                seen = time.perf_counter()
            elif not woke and os.waitpid(pid, os.WNOHANG) != (0, 0):
                raise SystemExit(f"lorch run in {ws} ended before its first command")
        _, status, usage = os.wait4(pid, 0)
    finally:
        ino.close()
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"lorch run in {ws} exited with {os.waitstatus_to_exitcode(status)}")
    return (seen - t0) * 1000, wall * 1000, (usage.ru_utime + usage.ru_stime) * 1000


def imports(argv: list[str], cwd: Path) -> dict[str, int]:
    """Module -> its own import time (us), for one run of ``python -X importtime ARGV``."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", *argv],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    if r.returncode != 0:
        raise SystemExit(f"{argv} exited with {r.returncode}")
    found = {}
    for line in r.stderr.splitlines():
        if line.startswith("import time:") and "[us]" not in line:
            own, _, name = line.removeprefix("import time:").split("|")
            found[name.strip()] = int(own)
    return found


def help_cost(runs: int) -> tuple[float, float]:
    """Median wall and CPU (ms) of `lorch --help`."""
    walls, cpus = [], []
    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_RDWR, 0) for fd in (0, 1, 2)]
    for _ in range(runs):
        t0 = time.perf_counter()
        pid = os.posix_spawn(LORCH, [LORCH, "--help"], os.environ, file_actions=devnull)
        _, status, usage = os.wait4(pid, 0)
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((usage.ru_utime + usage.ru_stime) * 1000)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"lorch --help exited with {os.waitstatus_to_exitcode(status)}")
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15, help="runs per figure (default 15)")
    parser.add_argument("--quick", action="store_true", help="5 runs per figure")
    args = parser.parse_args()
    runs = 5 if args.quick else args.runs
    compile_packages()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        firsts, walls, cpus = [], [], []
        for i in range(runs):
            first, wall, cpu = first_command(tmp / f"run-{i}")
            firsts.append(first)
            walls.append(wall)
            cpus.append(cpu)
        bare = set(imports(["-c", "pass"], tmp))
        entry_points = {
            "lorch --help": [LORCH, "--help"],
            "lorch run (one round)": [LORCH, "run", "--workspace"],
            "mockagent (plain start)": [MOCK, "--type", "reviewer", "--workspace"],
        }
        profile: dict[str, tuple[list[int], list[float]]] = {}
        for k, (name, argv) in enumerate(entry_points.items()):
            counts, totals = [], []
            for i in range(runs):
                ws = tmp / f"imports-{k}-{i}"
                loop_workspace(ws, 0)
                full = [*argv, str(ws)] if argv[-1] == "--workspace" else argv
                own = {m: us for m, us in imports(full, ws).items() if m not in bare}
                counts.append(len(own))
                totals.append(sum(own.values()) / 1000)
            profile[name] = (counts, totals)
        help_wall, help_cpu = help_cost(runs)
    print(f"medians of {runs} runs")
    print(
        f"time to first command (lorch run start -> first command in the ledger): "
        f"{statistics.median(firsts):.0f} ms (min {min(firsts):.0f}); goal <= 3x Go's 9-16 ms"
    )
    print(
        f"one-round run: wall {statistics.median(walls):.0f} ms, "
        f"CPU {statistics.median(cpus):.0f} ms (lorch and its three agents)"
    )
    print(f"lorch --help: wall {help_wall:.0f} ms, CPU {help_cpu:.0f} ms")
    print("imports beyond a bare Python (python -X importtime):")
    for name, (counts, totals) in profile.items():
        print(
            f"  {name:25s} {statistics.median(counts):4.0f} modules, "
            f"{statistics.median(totals):6.1f} ms"
        )


if __name__ == "__main__":
    main()
