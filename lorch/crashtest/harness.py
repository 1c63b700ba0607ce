"""The crash-injection harness (DESIGN.md §8).

A clean baseline of the scenario is recorded twice (and the two compared), so
"record k" names the same point in every run. Then, for every offset k and
every mode, the scenario runs in a fresh workspace, is crashed at k, resumed
(again if the mode crashes the resume too), and the invariants are checked.
The parts: ``baseline.py`` records and compares the clean runs,
``launcher.py`` starts lorch (forked from a warm server) and tracks every
process group, ``verdict.py`` and ``invariants.py`` check a resumed run, and
``syscalls.py`` (with ``strace.py`` and ``states.py``) derives the ``powercut``
mode's crash states from a recorded trace.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorch.agents import procs
from lorch.app import scenarios
from lorch.crashtest import invariants
from lorch.crashtest.baseline import Baseline, record_baseline, scenario_args
from lorch.crashtest.invariants import Broken, check_receipts_before_end
from lorch.crashtest.launcher import PROCS, RUN_TIMEOUT, Trail, lorch_argv, lorch_env
from lorch.crashtest.verdict import check_invariants, check_write_ahead
from lorch.crashtest.workspace import final_status, read_records, the_ledger
from lorch.store import ledger
from lorch.wire.errors import UsageError

MODES = ("kill", "torn", "agent", "powerloss", "double", "corrupt", "powercut", "external")
DEFAULT_MODES = ("kill", "torn", "agent", "powerloss", "double", "corrupt")
FAILPOINT = {
    "kill": "after",
    "torn": "torn",
    "agent": "agent",
    "powerloss": "powerloss",
    "double": "after",
}
SCRATCH_VAR = "LORCH_CRASHTEST_SCRATCH"


def default_scratch() -> Path | None:
    """Where crash workspaces go: ``$LORCH_CRASHTEST_SCRATCH``, else a RAM file
    system (``/dev/shm``) when there is one, else the system's temp folder (None).

    A workspace is thrown away after its point, and what a crash leaves is
    decided by the failpoint (or, offline, by the persistence model), never by
    the disk under it: a SIGKILL keeps the page cache on any file system. In
    RAM, the resumed run's own fsyncs cost nothing, and they were most of a
    point's time.
    """
    env = os.environ.get(SCRATCH_VAR)
    if env:
        return Path(env)
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK):
        return shm
    return None


@dataclass(frozen=True)
class Point:
    offset: int
    mode: str

    @property
    def name(self) -> str:
        return f"{self.mode}@{self.offset}"


@dataclass
class Result:
    point: Point
    record: str
    verdict: str  # pass | fail
    invariant: str = ""
    detail: str = ""
    seconds: float = 0.0
    workspace: str | None = None


@dataclass
class Options:
    jobs: int = field(default_factory=lambda: os.cpu_count() or 1)
    seed: int = 0
    keep_failed: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)  # tests only: planted bugs
    progress: Callable[[int, int, Result], None] | None = None
    torn_bytes: str = "edges"  # powercut: torn appends at edges|all byte offsets
    cuts: str = "all"  # powercut: all states, or only those losing every unsynced op
    fail_fast: bool = False  # stop starting points after the first failure
    offline: Any = None  # powercut: the recorded trace and its states (syscalls.Offline)
    scratch: Path | None = field(default_factory=default_scratch)  # None: the temp folder


def points(
    baseline: Baseline,
    modes: Iterable[str],
    offsets: Iterable[int] | None = None,
    states: int = 0,
    chosen: list[int] | None = None,
) -> list[Point]:
    """The points to explore. ``powercut`` numbers crash states (``states`` of
    them, from the recorded trace; by default the ``chosen`` ones) rather than
    ledger offsets."""
    modes = list(modes)
    for m in modes:
        if m not in MODES:
            raise UsageError(f"unknown crash mode {m!r}; known: {', '.join(MODES)}")
    out = []
    for m in modes:
        n = states if m == "powercut" else baseline.n
        default = chosen if m == "powercut" and chosen is not None else range(1, n + 1)
        picked = list(offsets) if offsets is not None else list(default)
        for k in picked:
            if not 1 <= k <= n:
                raise UsageError(
                    f"crash state {k} does not exist: the trace gives states 1..{n}"
                    if m == "powercut"
                    else f"offset {k} is beyond the ledger: the baseline has records 1..{n}"
                )
        out += [Point(k, m) for k in picked]
    return out


def explore(point: Point, baseline: Baseline, opts: Options, workdir: Path) -> Result:
    started = time.monotonic()
    ws = workdir / f"{point.mode}-{point.offset}"
    what = (
        opts.offline.states[point.offset - 1].describe(opts.offline.trace)
        if point.mode == "powercut"
        else baseline.describe(point.offset)
    )
    result = Result(point, what, "pass")
    trail = Trail(workdir / f"{ws.name}.stderr")
    try:
        _explore(point, baseline, opts, ws, trail)
    except Broken as b:
        result.verdict, result.invariant = "fail", b.invariant
        result.detail = f"{b.detail} ({trail.last()})"
    result.seconds = time.monotonic() - started
    if result.verdict == "fail" and opts.keep_failed is not None:
        dest = opts.keep_failed / ws.name
        shutil.rmtree(dest, ignore_errors=True)
        # A process still running there (the failure may be one) can remove
        # a file while it is copied: keep the rest.
        with contextlib.suppress(shutil.Error):
            shutil.copytree(ws, dest, symlinks=True)
        with contextlib.suppress(OSError):
            shutil.copyfile(trail.log, opts.keep_failed / trail.log.name)
        result.workspace = str(dest)
    shutil.rmtree(ws, ignore_errors=True)
    with contextlib.suppress(FileNotFoundError):
        trail.log.unlink()
    return result


def _explore(point: Point, baseline: Baseline, opts: Options, ws: Path, trail: Trail) -> None:
    if point.mode != "powercut":  # a crash state brings its own files
        scenarios.materialize(baseline.scenario, ws)
    answers = scenario_args(baseline.scenario)
    run_args = [*lorch_argv(), "run", "--workspace", str(ws), *answers]
    resume_args = [*lorch_argv(), "resume", "--workspace", str(ws), *answers]
    if point.mode == "external":
        _external_crash(point, baseline, opts, ws, run_args)
    elif point.mode == "corrupt":
        _corrupt_middle_line(point, baseline, opts, ws, run_args, trail)
        return
    elif point.mode == "powercut":
        from lorch.crashtest import syscalls

        cut = syscalls.materialize_state(opts.offline, point.offset, ws)
        for at, what in opts.offline.rewrites:
            if at < cut.prefix:
                raise Broken(
                    "receipts_write_once", f"operation {at + 1} of the recorded trace: {what}"
                )
        check_receipts_before_end(ws)
    else:
        env = lorch_env(opts.extra_env, f"{FAILPOINT[point.mode]}:{point.offset}")
        PROCS.run(run_args, env, trail=trail)
    check_write_ahead(ws)
    receipts = invariants.receipt_files(ws)
    if point.mode == "double" and final_status(read_records(ws)) == "running":
        path = the_ledger(ws)
        n = ledger.scan(path).records if path is not None else 0
        PROCS.run(resume_args, lorch_env(opts.extra_env, f"after:{n + 1}"), trail=trail)
        check_write_ahead(ws)
    for _ in range(5):
        # Killed before its first record was durable, a run left nothing to
        # resume (lorch says so): what its user does then is run it again.
        args = resume_args if the_ledger(ws) is not None else run_args
        rc = PROCS.run(args, lorch_env(opts.extra_env, None), trail=trail)
        if rc != -signal.SIGKILL:
            break
    check_invariants(ws, baseline, receipts)


def _corrupt_middle_line(
    point: Point, baseline: Baseline, opts: Options, ws: Path, args: list[str], trail: Trail
) -> None:
    """Crash after record k+1, damage line k (a middle line, never the last), resume.

    A damaged line that is not the last cannot be a torn append: resume must
    stop at once with one line naming the file and line, and change nothing.
    """
    last = min(point.offset + 1, baseline.n)
    line = min(point.offset, baseline.n - 1)
    env = lorch_env(opts.extra_env, f"after:{last}" if last < baseline.n else None)
    PROCS.run(args, env, trail=trail)
    path = the_ledger(ws)
    if path is None or line < 1:
        raise Broken("stops_on_corruption", "the crashed run left no ledger to damage")
    data = bytearray(path.read_bytes())
    starts = [0] + [i + 1 for i, b in enumerate(data) if b == 0x0A]
    if len(starts) <= line:
        raise Broken("stops_on_corruption", f"the crashed run left only {len(starts) - 1} lines")
    a, b = starts[line - 1], starts[line] - 1
    data[(a + b) // 2] = 0x01  # a control byte is invalid anywhere in JSON
    path.write_bytes(bytes(data))
    before = bytes(data)
    proc = subprocess.run(
        [*lorch_argv(), "resume", "--workspace", str(ws)],
        env=lorch_env(opts.extra_env, None),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        start_new_session=True,
    )
    trail.add("resume", proc.returncode, proc.stderr)
    err = proc.stderr.decode("utf-8", "replace").strip()
    where = f"{path.name}:{line}"
    if proc.returncode == 0:
        raise Broken("stops_on_corruption", f"resume went on over the damaged line {where}")
    if "Traceback" in err or len(err.splitlines()) != 1 or where not in err:
        first = err.splitlines()[-1] if err else "nothing"
        raise Broken(
            "stops_on_corruption",
            f"resume stopped (exit {proc.returncode}) without one line naming {where}: {first}",
        )
    if path.read_bytes() != before:
        raise Broken("stops_on_corruption", f"resume changed the damaged ledger {path.name}")


def _external_crash(
    point: Point, baseline: Baseline, opts: Options, ws: Path, args: list[str]
) -> None:
    rng = random.Random(f"{opts.seed}:{point.offset}")
    delay = rng.uniform(0.0, 1.5)
    proc = procs.spawn(
        args,
        env=lorch_env(opts.extra_env, None),
        stdin=procs.DEVNULL,
        stdout=procs.DEVNULL,
        stderr=procs.DEVNULL,
    )
    with PROCS.lock:
        PROCS.groups.add(proc.pid)
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(delay)
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        with PROCS.lock:
            PROCS.groups.discard(proc.pid)


def crashtest(
    scenario_ref: str | Path,
    modes: Iterable[str] = DEFAULT_MODES,
    offsets: Iterable[int] | None = None,
    opts: Options | None = None,
    baseline: Baseline | None = None,
) -> tuple[Baseline, list[Result]]:
    """Record the baseline (unless given one of this scenario), explore every
    point in parallel, return the results."""
    opts = opts or Options()
    if baseline is None:
        baseline = record_baseline(scenario_ref, opts.extra_env, opts.scratch)
    modes = list(modes)
    PROCS.stopping.clear()
    with tempfile.TemporaryDirectory(prefix="lorch-crashtest-", dir=opts.scratch) as tmp:
        if "powercut" in modes and opts.offline is None:
            from lorch.crashtest import syscalls

            rec = Path(tmp) / "recording"
            rec.mkdir()
            opts.offline = syscalls.prepare(
                baseline.scenario, lorch_env(opts.extra_env, None), rec, opts.torn_bytes, opts.cuts
            )
        off = opts.offline
        todo = points(
            baseline, modes, offsets, len(off.states) if off else 0, off.chosen if off else None
        )
        results: list[Result] = []
        pool = ThreadPoolExecutor(max_workers=max(1, opts.jobs))
        try:
            futures = [pool.submit(explore, p, baseline, opts, Path(tmp)) for p in todo]
            for fut in as_completed(futures):
                if fut.cancelled():
                    continue
                res = fut.result()
                results.append(res)
                if opts.progress is not None:
                    opts.progress(len(results), len(todo), res)
                if opts.fail_fast and res.verdict == "fail":
                    for f in futures:
                        f.cancel()  # the points already running finish
        except KeyboardInterrupt:
            PROCS.kill_all()
            for f in futures:
                f.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            results.sort(key=lambda r: (MODES.index(r.point.mode), r.point.offset))
            raise CrashtestInterrupted(baseline, results) from None
        pool.shutdown(wait=True)
    results.sort(key=lambda r: (MODES.index(r.point.mode), r.point.offset))
    return baseline, results


class CrashtestInterrupted(Exception):
    """Ctrl-C during a matrix: the points explored so far, for a partial report."""

    def __init__(self, baseline: Baseline, results: list[Result]) -> None:
        super().__init__("interrupted")
        self.baseline = baseline
        self.results = results
