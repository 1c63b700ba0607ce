"""Peak memory of lorch over long runs (1,000 / 3,000 / 10,000 review rounds).

Goal: <= 80 MB and flat as rounds grow. Each run is a child process; its peak
RSS is read from getrusage. Run: python bench/orchestrator_memory.py [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _bytecode import compile_packages
from _workspace import loop_workspace

CHILD = """
import io, os, resource, sys
from pathlib import Path
from lorch.app.runner import Console, run
out = run(Path(sys.argv[1]), console=Console(out=open(os.devnull, "w"), color=False))
assert out.status == "completed", out
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> None:
    compile_packages()
    sizes = [100, 300, 1000] if "--quick" in sys.argv else [1000, 3000, 10_000]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as t:
        for n in sizes:
            ws = Path(t) / f"ws-{n}"
            loop_workspace(ws, n)
            t0 = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", CHILD, str(ws)], capture_output=True, text=True, check=True
            )
            rss = int(out.stdout.split()[-1]) / 1024
            print(f"{n:>6,} rounds: peak RSS {rss:.1f} MB, {time.perf_counter() - t0:.0f} s")
    print("goal: <= 80 MB, flat as rounds grow")


if __name__ == "__main__":
    main()
