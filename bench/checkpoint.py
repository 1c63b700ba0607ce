"""Checkpoint cost at 1,000 and 10,000 files with one file changed, beside bare git.

Goals (issue #12 point 11): take() <= 30 ms at 10,000 files, and <= 2x the bare
git plumbing doing the same (`git add -A` + `git write-tree` on an equivalent
private git dir: same settings, same exclusions, its own index).
restore() is timed the same way against `git add -A` + `git read-tree --reset -u`.

A take after the first of a process rescans only the directories that changed
(lorch/store/watch.py); the "full scan" row is a take that scans everything, as the
first of a process (every resume) does, and as every take does without inotify.

Run: python bench/checkpoint.py [--quick]   (medians of N rounds; BENCH_DIR picks the disk)
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from lorch.store.checkpoint import Checkpoints


def make_tree(root: Path, files: int) -> None:
    for i in range(files):
        d = root / "src" / f"d{i % 100:02d}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}.py").write_bytes(f"# file {i}\n".encode() * 40)


def _cpu() -> float:
    """CPU seconds (user + system) of this process and its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def median_ms(
    fn: Callable[[], object], before: Callable[[int], object], rounds: int
) -> tuple[float, float]:
    """Median wall time and median CPU time (git included), in ms.

    CPU time is the figure to compare on a busy machine: wall time there
    measures the other processes' load as much as the work.
    """
    times, cpus = [], []
    for r in range(rounds):
        before(r)
        c0, t0 = _cpu(), time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
        cpus.append((_cpu() - c0) * 1000)
    return statistics.median(times), statistics.median(cpus)


class BareGit:
    """The plumbing by hand, on a private dir set up like lorch's store."""

    def __init__(self, ws: Path, like: Path, git_dir: Path) -> None:
        shutil.copytree(like, git_dir, ignore=shutil.ignore_patterns("index", "objects", "*.lock"))
        (git_dir / "objects").mkdir()
        self.env = {
            "PATH": os.environ["PATH"],
            "GIT_DIR": str(git_dir),
            "GIT_WORK_TREE": str(ws),
            "GIT_INDEX_FILE": str(git_dir / "index"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
        }
        self.ws = ws

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=self.ws, env=self.env, check=True, capture_output=True, text=True
        ).stdout

    def take(self) -> str:
        self.git("add", "-A", "--", ".")
        return self.git("write-tree").strip()

    def restore(self, tree: str) -> None:
        self.git("add", "-A", "--", ".")
        self.git("read-tree", "--reset", "-u", tree)


def bench(files: int, rounds: int, base: Path) -> None:
    ws = base / f"ws{files}"
    ws.mkdir()
    make_tree(ws, files)
    target = ws / "src" / "d00" / "f0.py"
    ck = Checkpoints(ws, ws / "state" / "checkpoints.git")
    scanner = Checkpoints(ws, ws / "state" / "full.git", watch=False)
    scanner.take()
    first = ck.take()  # fills the index's stat cache, as the run's first checkpoint does
    bare = BareGit(ws, ws / "state" / "checkpoints.git", base / f"bare{files}.git")
    bare_first = bare.take()

    def edit(r: int) -> None:
        target.write_bytes(f"edit {files} {r} {time.time_ns()}\n".encode())

    take = median_ms(ck.take, edit, rounds)
    full = median_ms(scanner.take, edit, rounds)
    bare_take = median_ms(bare.take, edit, rounds)
    restore = median_ms(lambda: ck.restore(first), edit, rounds)
    bare_restore = median_ms(lambda: bare.restore(bare_first), edit, rounds)
    unchanged = median_ms(ck.take, lambda r: None, rounds)

    def row(what: str, ours: tuple[float, float], theirs: tuple[float, float], goal: str) -> str:
        return (
            f"{files:>6,} files, 1 changed, {what:<9} lorch {ours[0]:6.1f} ms (cpu {ours[1]:5.1f})"
            f"  bare git {theirs[0]:6.1f} ms (cpu {theirs[1]:5.1f})"
            f"  ratio {ours[0] / theirs[0]:4.2f} (cpu {ours[1] / theirs[1]:4.2f})   goal: {goal}"
        )

    big = files >= 10_000
    print(row("take", take, bare_take, "<= 30 ms, ratio <= 2" if big else "ratio <= 2"))
    print(row("full scan", full, bare_take, "ratio <= 2"))
    print(row("restore", restore, bare_restore, "ratio <= 2"))
    print(
        f"{files:>6,} files, nothing changed, take {unchanged[0]:6.1f} ms (cpu {unchanged[1]:5.1f})"
        f"   load average now {os.getloadavg()[0]:.1f}"
    )
    print(
        f"{files:>6,} files, lorch's takes and restores: {ck.full_scans} full scans, "
        f"{ck.partial_scans} of the changed directories only"
    )


def main() -> None:
    rounds = 5 if "--quick" in sys.argv else 21
    git = subprocess.run(["git", "--version"], capture_output=True, text=True).stdout.split()[-1]
    load = os.getloadavg()[0]
    print(
        f"git {git}, median of {rounds} rounds, load average {load:.1f} on {os.cpu_count()} cores"
    )
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        for files in (1_000, 10_000):
            bench(files, rounds, Path(tmp))
    print(
        "goals: take <= 30 ms at 10,000 files; take and restore <= 2x bare git. Wall time on a "
        "busy machine measures its load too: compare the cpu figures there."
    )


if __name__ == "__main__":
    main()
