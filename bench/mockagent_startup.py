"""What one mockagent start costs: CPU and wall per start, against a bare Python.

Each case is a whole process, spawned as lorch spawns an agent (the installed
`mockagent` script) and run to its exit, with stdin from a file and stdout to
/dev/null, in a fresh workspace:

- bare: `python -c pass` with the same interpreter (the floor every start pays);
- plain: `mockagent --type reviewer`, stdin at EOF: argv, heartbeats, the
  journal opened, EOF, exit (what a run pays per agent before any work);
- fixture: the same with `--script` naming a small fixture in the original
  format (responses, a note key, a delay and a files entry): it is validated;
- one command: plain, with one command on stdin: checked against the schema,
  answered (a file written, the journal fsynced), then EOF.

CPU is user + system time of the process (`os.wait4`); wall is spawn to exit.
The cases are interleaved, so a change in the machine's load touches them all
alike; each figure is the median of N starts. The modules a plain start
imports beyond a bare Python are listed once.
Goal: a plain start <= 15 ms of CPU above the bare Python (issue 26).
Run: python bench/mockagent_startup.py [--runs N] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
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

MOCK = str(Path(sys.executable).parent / "mockagent")

FIXTURE = {
    "comment": "a note, as the original fixtures have them",
    "responses": {
        "implement": {
            "delay_ms": 0,
            "files": [{"path": "src/a.py", "content": "A = 1\n"}],
            "events": [{"type": "builder.completed", "status": "success"}],
        },
        "review": [{"events": [{"type": "review.completed", "status": "approved"}]}],
    },
}


def command() -> bytes:
    inputs = {"round": 1}
    key = "ik:" + hashlib.sha256(b"bench review T-0042 round 1").hexdigest()
    cmd = {
        "kind": "command",
        "message_id": "cmd-1",
        "correlation_id": "corr-1",
        "task_id": "T-0042",
        "idempotency_key": key,
        "to": {"agent_type": "reviewer"},
        "action": "review",
        "inputs": inputs,
        "version": {"snapshot_id": "snap-0123456789ab"},
        "deadline": "2030-01-01T00:00:00Z",
        "retry": {"attempt": 0, "max_attempts": 3},
        "priority": 5,
    }
    return json.dumps(cmd).encode() + b"\n"


def spawn(argv: list[str], stdin: str) -> tuple[float, float]:
    """CPU and wall (ms) of one process run to its exit."""
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, stdin, os.O_RDONLY, 0),
        (os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0),
        (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
    ]
    t0 = time.perf_counter()
    pid = os.posix_spawn(argv[0], argv, os.environ, file_actions=actions)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv} exited with status {os.waitstatus_to_exitcode(status)}")
    return (usage.ru_utime + usage.ru_stime) * 1000, wall * 1000


def cases(tmp: Path) -> dict[str, tuple[list[str], str]]:
    fx = tmp / "fixture.json"
    fx.write_text(json.dumps(FIXTURE))
    cmd = tmp / "command.ndjson"
    cmd.write_bytes(command())
    return {
        "bare python": ([sys.executable, "-c", "pass"], os.devnull),
        "mockagent, plain start": ([MOCK, "--type", "reviewer"], os.devnull),
        "mockagent, with a fixture": (
            [MOCK, "--type", "builder", "--script", str(fx)],
            os.devnull,
        ),
        "mockagent, one command": ([MOCK, "--type", "reviewer"], str(cmd)),
    }


def imported_beyond_bare(tmp: Path) -> list[str]:
    """The modules a plain start imports that a bare Python does not."""

    def names(argv: list[str]) -> list[str]:
        r = subprocess.run(
            [sys.executable, "-X", "importtime", *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=tmp,
            check=True,
        )
        return [
            line.rsplit("|", 1)[1].strip()
            for line in r.stderr.splitlines()
            if line.startswith("import time:") and "[us]" not in line
        ]

    bare = set(names(["-c", "pass"]))
    return [
        m
        for m in names([MOCK, "--type", "reviewer", "--workspace", str(tmp / "imp")])
        if m not in bare
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40, help="starts per case (default 40)")
    parser.add_argument("--quick", action="store_true", help="10 starts per case")
    args = parser.parse_args()
    runs = 10 if args.quick else args.runs
    compile_packages()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        todo = cases(tmp)
        cpu: dict[str, list[float]] = {name: [] for name in todo}
        wall: dict[str, list[float]] = {name: [] for name in todo}
        for i in range(runs):
            for k, (name, (argv, stdin)) in enumerate(todo.items()):
                ws = tmp / f"ws-{i}-{k}"
                ws.mkdir()
                full = argv if name == "bare python" else [*argv, "--workspace", str(ws)]
                c, w = spawn(full, stdin)
                cpu[name].append(c)
                wall[name].append(w)
        extra = imported_beyond_bare(tmp)
    base_cpu = statistics.median(cpu["bare python"])
    base_wall = statistics.median(wall["bare python"])
    print(f"per start, median of {runs} (interleaved); CPU = user + system of the process")
    for name in todo:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        above = (
            ""
            if name == "bare python"
            else f"  (+{c - base_cpu:5.1f} CPU, +{w - base_wall:5.1f} wall)"
        )
        print(f"  {name:27s} CPU {c:6.1f} ms   wall {w:6.1f} ms{above}")
    print(f"a plain start imports {len(extra)} modules beyond a bare Python: {', '.join(extra)}")
    print("goal: a plain start <= 15 ms of CPU above the bare Python")


if __name__ == "__main__":
    main()
