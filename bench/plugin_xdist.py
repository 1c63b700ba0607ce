"""Speed-up of the pytest plugin's crash points under pytest-xdist (-n 2 against one process).

Writes a suite of happy-path crash points (kill and torn at every offset) into
a temporary folder and runs it twice: ``-n 0`` (no workers) and ``-n 2``.
Run: python bench/plugin_xdist.py
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = """
import pytest


@pytest.mark.lorch_crashpoints("happy-path", modes=["kill", "torn"])
def test_point(lorch_crash_point, tmp_path):
    result = lorch_crash_point.explore(tmp_path)
    assert result.verdict == "pass", f"{result.invariant}: {result.detail}"
"""


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "test_points.py").write_text(SUITE)
        times = {}
        for n in ("0", "2"):
            t0 = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "pytest", "-q", "-p", "lorch", "-n", n, "test_points.py"],
                cwd=tmp,
                capture_output=True,
                text=True,
            )
            times[n] = time.perf_counter() - t0
            last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
            print(f"-n {n}: {last} ({times[n]:.1f} s wall, collection included)")
        print(f"speed-up of -n 2: {times['0'] / times['2']:.2f}x")


if __name__ == "__main__":
    main()
