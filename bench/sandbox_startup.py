"""What the sandbox adds to starting an agent (issue 22, point 7).

Medians over N runs, bwrap against none, each started exactly as lorch starts
it (``ConfiguredAgents.launch``: the wrapped argv, the agent's environment):

- a trivial agent (``sh``) to its first line: the sandbox's own start-up;
- mockagent (NDJSON) to its first heartbeat: an agent's start as a run sees it;
- ``true`` from start to exit: what the sandbox adds to each command an ACP
  turn runs for its agent (``terminal/*``, the task's test command), tearing
  the sandbox's namespaces down included.

The sandbox's set-up (creating the protected directories, building the argv)
is timed with the start. Goal: <= 10 ms added per agent start.
Run: python bench/sandbox_startup.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lorch.agents import sandbox
from lorch.app import config
from lorch.app.launch import ConfiguredAgents
from lorch.wire.redact import Redactor

MOCK = str(Path(sys.executable).parent / "mockagent")
TRUE = shutil.which("true") or "/bin/true"


def agents(ws: Path, mode: str, cmd: list[str]) -> ConfiguredAgents:
    raw = {
        "version": "1",
        "task": {"id": "T-1"},
        "agents": {
            r: {"cmd": cmd, "sandbox": mode} for r in ("builder", "reviewer", "spec_maintainer")
        },
    }
    (ws / "lorch.json").write_text(json.dumps(raw))
    cfg = config.parse(raw, ws / "lorch.json")
    return ConfiguredAgents(ws, cfg, Redactor([]), log_dir=ws.parent / "logs")


def to_exit(ws: Path, mode: str, runs: int) -> list[float]:
    ca = agents(ws, mode, [TRUE])
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        launch = ca.launch("builder", 1, "run-1", None)
        subprocess.run(launch.argv, cwd=launch.cwd, env=launch.env, check=True)
        times.append(time.perf_counter() - t0)
    return times


def to_first_line(ws: Path, mode: str, runs: int, cmd: list[str]) -> list[float]:
    """Start to the agent's first line; then EOF, and it exits (not timed)."""
    ca = agents(ws, mode, cmd)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        launch = ca.launch("reviewer", 1, "run-1", None)
        p = subprocess.Popen(
            launch.argv,
            cwd=launch.cwd,
            env=launch.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
        )
        assert p.stdout is not None and p.stdin is not None
        line = p.stdout.readline()
        times.append(time.perf_counter() - t0)
        assert line, f"{cmd[0]} said nothing"
        p.stdin.close()
        p.wait()
        p.stdout.close()
    return times


def trivial(ws: Path, mode: str, runs: int) -> list[float]:
    return to_first_line(ws, mode, runs, ["sh", "-c", "echo up; cat >/dev/null"])


def to_heartbeat(ws: Path, mode: str, runs: int) -> list[float]:
    return to_first_line(ws, mode, runs, [MOCK, "--type", "reviewer"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    found = sandbox.probe()
    if found.bwrap is None:
        print(f"no sandbox here: {found.why}")
        return 1
    with tempfile.TemporaryDirectory(prefix="lorch-bench-") as tmp:
        ws = Path(tmp) / "ws"
        ws.mkdir()
        cases = (
            ("trivial agent, to its first line", trivial),
            ("mockagent, to first heartbeat", to_heartbeat),
            ("true, start to exit (per command)", to_exit),
        )
        for what, measure in cases:
            measure(ws, "bwrap", 3)  # warm: page cache, bytecode
            med = {
                m: statistics.median(measure(ws, m, args.runs)) * 1000 for m in ("none", "bwrap")
            }
            added = med["bwrap"] - med["none"]
            print(
                f"{what:34} none {med['none']:7.2f} ms   bwrap {med['bwrap']:7.2f} ms   "
                f"added {added:6.2f} ms   (median of {args.runs})"
            )
    print("per ACP turn: each terminal/* command and the test command add the last figure")
    return 0


if __name__ == "__main__":
    sys.exit(main())
