"""Ledger append with an fsync per record, beside a raw os.write + os.fsync loop.

Goal: Ledger.append reaches >= 0.8 of the raw floor. Run: python bench/ledger_append.py [--quick]
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from lorch.store.ledger import Ledger
from lorch.wire import protocol


def record(n: int) -> dict[str, object]:
    return {
        "kind": "event",
        "message_id": f"evt-{n:012x}",
        "correlation_id": "corr-T-0042-1",
        "task_id": "T-0042",
        "from": {"agent_type": "builder", "agent_id": "builder#1"},
        "event": "builder.progress",
        "payload": {"message": "step", "n": n},
        "occurred_at": "2026-11-24T12:00:00.000000Z",
    }


def main() -> None:
    n = 300 if "--quick" in sys.argv else 3000
    records = [record(i) for i in range(n)]
    lines = [protocol.encode(r) for r in records]
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        raw = Path(tmp) / "raw.ndjson"
        fd = os.open(raw, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        t0 = time.perf_counter()
        for line in lines:
            os.write(fd, line)
            os.fsync(fd)
        floor = n / (time.perf_counter() - t0)
        os.close(fd)
        ledger, _ = Ledger.open(Path(tmp) / "events" / "run.ndjson")
        t0 = time.perf_counter()
        for r in records:
            ledger.append(r)
        rate = n / (time.perf_counter() - t0)
        ledger.close()
    print(f"records: {n}")
    print(f"raw os.write+os.fsync: {floor:,.0f} records/s")
    print(f"Ledger.append (fsync): {rate:,.0f} records/s")
    print(f"ratio: {rate / floor:.2f} (goal >= 0.80)")


if __name__ == "__main__":
    main()
