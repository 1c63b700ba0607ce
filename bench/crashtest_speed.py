"""Crash points verified per second for review-loop, all default modes, --jobs 2 and 1.

Goal: >= 5 points/s with --jobs 2. Run: python bench/crashtest_speed.py [--quick]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from lorch.crashtest import DEFAULT_MODES, Options, crashtest
from lorch.crashtest.baseline import record_baseline

sys.path.insert(0, str(Path(__file__).parent))
from _bytecode import compile_packages


def main() -> None:
    compile_packages()
    # --quick: every fourth record of the baseline (whatever its length).
    n = record_baseline("review-loop").n
    offsets = list(range(1, n + 1, 4)) if "--quick" in sys.argv else None
    for jobs in (2, 1):
        t0 = time.perf_counter()
        baseline, results = crashtest("review-loop", DEFAULT_MODES, offsets, Options(jobs=jobs))
        dt = time.perf_counter() - t0
        failed = sum(r.verdict == "fail" for r in results)
        print(
            f"--jobs {jobs}: {len(results)} points ({baseline.n} records x {len(DEFAULT_MODES)} modes"
            f"{', sampled' if offsets else ''}), {failed} failed, {dt:.1f} s, {len(results) / dt:.2f} points/s"
        )
    print("goal: >= 5 points/s with --jobs 2")


if __name__ == "__main__":
    main()
