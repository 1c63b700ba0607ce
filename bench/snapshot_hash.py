"""Snapshot of a generated tree (>= 500 MB, >= 10,000 files) vs plain hashlib.

Goal: lorch.store.snapshot.manifest reaches >= 0.8 of hashlib.sha256 over the same bytes.
Run: python bench/snapshot_hash.py [--quick]
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

from lorch.store import snapshot


def main() -> None:
    quick = "--quick" in sys.argv
    files, size = (2_000, 25_000) if quick else (10_000, 52_000)
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        root = Path(tmp)
        block = os.urandom(size)
        for i in range(files):
            d = root / f"d{i % 100:02d}"
            d.mkdir(exist_ok=True)
            (d / f"f{i}.bin").write_bytes(block[: size - (i % 97)] + i.to_bytes(4, "big"))
        total = sum(p.stat().st_size for p in root.rglob("*.bin"))
        # Warm the page cache once so both measure hashing, not the disk.
        for p in root.rglob("*.bin"):
            p.read_bytes()
        t0 = time.perf_counter()
        for p in sorted(root.rglob("*.bin")):
            h = hashlib.sha256()
            with open(p, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        plain = total / (time.perf_counter() - t0) / 1e6
        t0 = time.perf_counter()
        m = snapshot.manifest(root)
        ours = total / (time.perf_counter() - t0) / 1e6
    print(f"tree: {len(m['files']):,} files, {total / 1e6:,.0f} MB")
    print(f"hashlib.sha256: {plain:,.0f} MB/s")
    print(f"lorch.store.snapshot.manifest: {ours:,.0f} MB/s")
    print(f"ratio: {ours / plain:.2f} (goal >= 0.80)")


if __name__ == "__main__":
    main()
