"""Offline crash states (the ``powercut`` mode): how many, and how fast.

Records happy-path once under strace, enumerates its crash states, and prints:
operations in the trace, states enumerated and distinct, the rate at which
states are derived (materialized and hashed), and the rate at which states are
explored end to end (written, checked, resumed in a fork of the warm server,
checked against the baseline) at each --jobs, on a sample of the distinct
states (--sample 0: all of them).

Two rates are printed, and they count differently:

- distinct states/s: crash states with different files, each resumed once;
- states/s: the enumerated states those explorations answer for. Cuts that
  leave byte-identical files (every name, directory and byte) give resume the
  same input, so the exploration of one answers for all of them; each
  enumerated state is counted once, by the distinct state whose files it leaves.

The baseline and the recording are made once, before the clock starts (they
are reported on their own line). Crash workspaces are in the harness's scratch
folder (RAM when there is one, see ``harness.default_scratch``).

Goal: >= 100 states/s on 2 cores.
Run: python bench/crash_states.py [--sample N] [--jobs 1,2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from lorch.crashtest import Options, crashtest, syscalls
from lorch.crashtest.baseline import record_baseline
from lorch.crashtest.harness import default_scratch
from lorch.crashtest.launcher import lorch_env

sys.path.insert(0, str(Path(__file__).parent))
from _bytecode import compile_packages


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=40, help="distinct states resumed (0: all)")
    ap.add_argument("--jobs", default="1,2", help="comma-separated --jobs values to measure")
    a = ap.parse_args()
    compile_packages()
    scratch = default_scratch()
    print(f"scratch folder: {scratch or tempfile.gettempdir()}")
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        t0 = time.perf_counter()
        baseline = record_baseline("happy-path", None, scratch)
        t1 = time.perf_counter()
        off = syscalls.prepare("happy-path", lorch_env({}, None), Path(tmp))
        t2 = time.perf_counter()
        print(
            f"trace: {len(off.trace.ops)} operations; {off.enumerated} states enumerated, "
            f"{len(off.states)} distinct, {sum(c.keep == ((-1, 0),) for c in off.states)} "
            f"losing every unsynced op; baseline {t1 - t0:.1f} s, recording + enumeration "
            f"{t2 - t1:.1f} s (not in the rates below)"
        )
        print(
            f"derivation: {off.enumerated / off.seconds_enumerating:.0f} states/s "
            "(materialized and hashed, one core)"
        )
        n = len(off.states)
        count = n if a.sample <= 0 else min(a.sample, n)
        sample = [1 + (i * n) // count for i in range(count)]
        covered = off.covered(sample)
        for jobs in [int(j) for j in a.jobs.split(",")]:
            t0 = time.perf_counter()
            _, results = crashtest(
                "happy-path", ["powercut"], sample, Options(jobs=jobs, offline=off), baseline
            )
            dt = time.perf_counter() - t0
            failed = sum(r.verdict == "fail" for r in results)
            print(
                f"--jobs {jobs}: {len(results)} distinct states explored end to end, "
                f"{failed} failed, {dt:.1f} s: {len(results) / dt:.1f} distinct states/s; "
                f"they answer for {covered} enumerated states: {covered / dt:.1f} states/s"
            )
    print("goal: >= 100 states/s on 2 cores")


if __name__ == "__main__":
    main()
