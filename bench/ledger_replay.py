"""Replay a generated 1,000,000-record ledger: records/s and peak memory.

Goal: >= 200,000 records/s, peak memory < 100 MB whatever the ledger size.
Run: python bench/ledger_replay.py [--quick]   (the replay runs in a child
process so its peak RSS is its own)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import resource, sys, time
from pathlib import Path
from lorch.store import ledger
path, validate = Path(sys.argv[1]), sys.argv[2] == "1"
t0 = time.perf_counter()
n = 0
for _ in ledger.read(path, validate=validate):
    n += 1
dt = time.perf_counter() - t0
print(n, dt, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def generate(path: Path, n: int) -> None:
    with open(path, "wb") as f:
        for i in range(n):
            rec = {
                "kind": "event",
                "message_id": f"evt-{i:012x}",
                "correlation_id": f"corr-T-0042-{i // 10}",
                "task_id": "T-0042",
                "from": {"agent_type": "builder", "agent_id": "builder#1"},
                "event": "artifact.produced",
                "payload": {"path": f"src/file_{i % 100}.py"},
                "artifacts": [
                    {
                        "path": f"src/file_{i % 100}.py",
                        "sha256": "sha256:" + "ab" * 32,
                        "size": 1234,
                    }
                ],
                "occurred_at": "2026-11-24T12:00:00.000000Z",
            }
            f.write(json.dumps(rec, separators=(",", ":")).encode() + b"\n")


def main() -> None:
    sizes = [20_000, 100_000] if "--quick" in sys.argv else [100_000, 1_000_000]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        for n in sizes:
            path = Path(tmp) / f"ledger-{n}.ndjson"
            generate(path, n)
            mb = path.stat().st_size / 1e6
            for validate in (False, True):
                if validate and n > 100_000:
                    continue  # schema validation is measured on the smaller ledger
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(path), "1" if validate else "0"],
                    capture_output=True,
                    text=True,
                    check=True,
                ).stdout.split()
                count, secs, rss_kb = int(out[0]), float(out[1]), int(out[2])
                label = "parse + schema validation" if validate else "parse (framing + JSON)"
                print(
                    f"{count:>9,} records ({mb:,.0f} MB), {label}: {count / secs:,.0f} records/s, "
                    f"peak RSS {rss_kb / 1024:.1f} MB"
                )
    print("goal: >= 200,000 records/s, peak < 100 MB independent of size")


if __name__ == "__main__":
    main()
