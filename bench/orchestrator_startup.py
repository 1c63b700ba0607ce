"""Time from `lorch run` start to the first command on the builder's stdin.

The builder is a tiny script that notes the time it reads its first line.
Goal: <= 300 ms. Run: python bench/orchestrator_startup.py [--quick]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bytecode import compile_packages

LORCH = str(Path(sys.executable).parent / "lorch")
STAMP = """
import sys, time, json, os
line = sys.stdin.readline()
open(os.environ["STAMP_FILE"], "w").write(repr(time.time()))
"""


def main() -> None:
    compile_packages()
    runs = 5 if "--quick" in sys.argv else 15
    times = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as tmp:
            ws = Path(tmp)
            script = ws / ".stamp.py"
            script.write_text(STAMP)
            stamp = ws / ".stamp"
            agent = {"cmd": [sys.executable, str(script)], "env": {"STAMP_FILE": str(stamp)}}
            cfg = {
                "version": "1",
                "task": {"id": "T-1"},
                "agents": {"builder": agent, "reviewer": agent, "spec_maintainer": agent},
                "policy": {"max_attempts": 1, "max_restarts": 0},
            }
            (ws / "lorch.json").write_text(json.dumps(cfg))
            t0 = time.time()
            subprocess.run([LORCH, "run", "--workspace", str(ws)], capture_output=True, timeout=60)
            times.append((float(stamp.read_text()) - t0) * 1000)
    print(
        f"lorch run start -> first command on the builder's stdin: median {statistics.median(times):.0f} ms, "
        f"min {min(times):.0f} ms over {runs} runs (goal <= 300 ms)"
    )


if __name__ == "__main__":
    main()
