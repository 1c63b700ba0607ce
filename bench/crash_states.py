"""Offline crash states (the ``powercut`` mode): how many, and how fast.

Records happy-path once under strace, enumerates its crash states, and prints:
operations in the trace, states enumerated and distinct, the rate at which
states are derived (materialized and hashed), and the rate at which distinct
states are explored end to end (written, checked, resumed, checked) at
--jobs 1 and 2 on a sample.

Goal: >= 100 states/s on 2 cores. Run: python bench/crash_states.py [--sample N]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from lorch.crashtest import Options, crashtest
from lorch.crashtest import syscalls as S
from lorch.crashtest.harness import _env

sys.path.insert(0, str(Path(__file__).parent))
from _bytecode import compile_packages


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=40, help="distinct states resumed per --jobs")
    a = ap.parse_args()
    compile_packages()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        off = S.prepare("happy-path", _env({}, None), Path(tmp))
        total = time.perf_counter() - t0
        print(
            f"trace: {len(off.trace.ops)} operations; {off.enumerated} states enumerated, "
            f"{len(off.states)} distinct, {sum(c.keep == ((-1, 0),) for c in off.states)} "
            f"losing every unsynced op; recording + enumeration {total:.1f} s"
        )
        print(
            f"derivation: {off.enumerated / off.seconds_enumerating:.0f} states/s "
            "(materialized and hashed, one core)"
        )
        step = max(1, len(off.states) // a.sample)
        sample = list(range(1, len(off.states) + 1, step))[: a.sample]
        for jobs in (1, 2):
            t0 = time.perf_counter()
            _, results = crashtest(
                "happy-path", ["powercut"], sample, Options(jobs=jobs, offline=off)
            )
            dt = time.perf_counter() - t0
            failed = sum(r.verdict == "fail" for r in results)
            print(
                f"--jobs {jobs}: {len(results)} distinct states explored end to end "
                f"(baseline included), {failed} failed, {dt:.1f} s, {len(results) / dt:.2f} states/s"
            )
    print("goal: >= 100 states/s on 2 cores")


if __name__ == "__main__":
    main()
