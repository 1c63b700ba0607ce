"""The crash-injection harness (DESIGN.md §8).

A clean baseline of the scenario is recorded twice (and the two compared), so
"record k" names the same point in every run. Then, for every offset k and
every mode, the scenario runs in a fresh workspace, is crashed at k, resumed
(again if the mode crashes the resume too), and the invariants are checked.
lorch and the agents only ever run as separate processes: a crash kills nothing
else. lorch itself is forked from a server process that has imported it once
(``forkserver.py``), which saves its start-up for each of the thousands of runs
a matrix makes; it is the same code and the same command line.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorch import ledger, procs, scenarios, snapshot, store
from lorch.canonical import canonical_json
from lorch.checksum import sha256_file
from lorch.crashtest import invariants
from lorch.crashtest.effects import effects_problem
from lorch.crashtest.forkserver import ForkServer
from lorch.crashtest.invariants import Broken
from lorch.errors import LedgerError, StorageError, UsageError
from lorch.launch import PRIVATE_VARS, with_scripts_path
from lorch.procs import group_alive
from lorch.workflow import replay

MODES = ("kill", "torn", "agent", "powerloss", "double", "corrupt", "powercut", "external")
DEFAULT_MODES = ("kill", "torn", "agent", "powerloss", "double", "corrupt")
FAILPOINT = {
    "kill": "after",
    "torn": "torn",
    "agent": "agent",
    "powerloss": "powerloss",
    "double": "after",
}
INVARIANTS = (
    "write_ahead",
    "completed",
    "ledger_replays",
    "one_key_per_command",
    "effects_once",
    "decisions_once",
    "verify",
    "files_equal",
    "receipts_match",
    "no_duplicate_work",
    "keys_completed_once",
    "orphans_ended",
    "no_stray_processes",
    "no_command_after_answer",
    "commands_match_baseline",
    "receipts_complete",
    "receipts_write_once",
    "snapshot_once",
    "no_stale_temp_files",
    "stops_on_corruption",
    "receipts_before_end",
)
# Fields that differ between two clean runs without meaning anything.
VOLATILE = {
    "message_id",
    "occurred_at",
    "deadline",
    "run_id",
    "pid",
    "pgid",
    "start_time",
    "argv",
    "delay_s",
    "config_digest",
}
RUN_TIMEOUT = 120.0
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
class Baseline:
    scenario: Path
    records: list[dict[str, Any]]
    files: dict[str, str]
    status: str

    @property
    def n(self) -> int:
        return len(self.records)

    def describe(self, k: int) -> str:
        r = self.records[k - 1]
        if r["kind"] == "command":
            return f"command {r['action']}"
        return f"event {r['event']}"


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


def lorch_argv() -> list[str]:
    return [sys.executable, "-m", "lorch"]


def _env(extra: dict[str, str], failpoint: str | None) -> dict[str, str]:
    env = with_scripts_path({k: v for k, v in os.environ.items() if k not in PRIVATE_VARS})
    env.update(extra)
    if failpoint:
        env["LORCH_CRASH_AT"] = failpoint
    return env


_server_lock = threading.Lock()
_server: ForkServer | None = None


def forkserver() -> ForkServer:
    """The fork server of this process, started on first use, stopped at exit."""
    global _server
    with _server_lock:
        if _server is None:
            _server = ForkServer()
            atexit.register(_server.close)
        return _server


class Procs:
    """Every process group the harness started, so Ctrl-C can end them all."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.groups: set[int] = set()
        self.stopping = threading.Event()

    def run(self, args: list[str], env: dict[str, str], timeout: float = RUN_TIMEOUT) -> int:
        if self.stopping.is_set():
            raise KeyboardInterrupt
        if args[: len(lorch_argv())] == lorch_argv():
            return self._run_forked(args[len(lorch_argv()) :], env, timeout)
        proc = procs.spawn(
            args, env=env, stdin=procs.DEVNULL, stdout=procs.DEVNULL, stderr=procs.DEVNULL
        )
        with self.lock:
            self.groups.add(proc.pid)
        try:
            rc = procs.wait(proc, timeout)
            if rc is None:
                procs.kill_and_reap(proc)
                return -999
            return rc
        finally:
            with self.lock:
                self.groups.discard(proc.pid)

    def _run_forked(self, args: list[str], env: dict[str, str], timeout: float) -> int:
        server = forkserver()
        pid = server.spawn(args, env)
        with self.lock:
            self.groups.add(pid)
        try:
            rc = server.wait(pid, timeout)
            if rc is None:
                procs.signal_group(pid, signal.SIGKILL)
                server.wait(pid, None)
                return -999
            return rc
        finally:
            with self.lock:
                self.groups.discard(pid)

    def kill_all(self) -> None:
        self.stopping.set()
        with self.lock:
            groups = list(self.groups)
        for g in groups:
            procs.signal_group(g, signal.SIGKILL)


PROCS = Procs()


def normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("*" if k in VOLATILE else normalise(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str) and value.startswith("run-"):
        return "run-*"
    return value


def workspace_files(ws: Path) -> dict[str, str]:
    return {rel: sha256_file(ws / rel)[0] for rel in snapshot.iter_files(ws)}


def the_ledger(ws: Path) -> Path | None:
    found = sorted((ws / "events").glob("run-*.ndjson")) if (ws / "events").is_dir() else []
    return found[0] if found else None


def read_records(ws: Path, *, strict: bool = False) -> list[dict[str, Any]]:
    path = the_ledger(ws)
    if path is None:
        return []
    return list(ledger.read(path, validate=strict, allow_torn=not strict))


def journals(ws: Path) -> list[dict[str, Any]]:
    out = []
    for j in sorted(ws.glob(".mockagent/*/journal.ndjson")):
        for line in j.read_text().splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def scenario_args(scenario: Path) -> list[str]:
    """Extra arguments a scenario gives ``lorch run`` and ``lorch resume`` (scripted answers)."""
    args = scenarios.load(scenario).get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise UsageError(f"{scenario / scenarios.META}: $.args: expected a list of strings")
    return args


def run_clean(scenario: Path, ws: Path, extra_env: dict[str, str]) -> int:
    scenarios.materialize(scenario, ws)
    args = [*lorch_argv(), "run", "--workspace", str(ws), *scenario_args(scenario)]
    return PROCS.run(args, _env(extra_env, None))


def record_baseline(
    scenario_ref: str | Path,
    extra_env: dict[str, str] | None = None,
    scratch: Path | None = None,
) -> Baseline:
    scenario = scenarios.resolve(scenario_ref)
    meta = scenarios.load(scenario)
    expected = meta.get("expected", {}).get("status", "completed")
    reason = str(meta.get("expected", {}).get("reason", ""))
    terminals = meta.get("expected", {}).get("terminal_events")
    runs = []
    for i in range(2):
        with tempfile.TemporaryDirectory(prefix="lorch-baseline-", dir=scratch) as tmp:
            ws = Path(tmp) / "ws"
            rc = run_clean(scenario, ws, extra_env or {})
            recs = read_records(ws)
            status = _final_status(recs)
            if status != expected:
                raise UsageError(
                    f"scenario {scenario.name}: baseline run {i + 1} ended {status} "
                    f"(exit {rc}), expected {expected}"
                )
            got = _terminal_events(recs)
            if terminals is not None and got != terminals:
                raise UsageError(
                    f"scenario {scenario.name}: baseline run {i + 1} answered "
                    f"{', '.join(got) or 'nothing'}; expected {', '.join(terminals)}"
                )
            why = _failure_reason(recs)
            if reason and reason not in why:
                raise UsageError(
                    f"scenario {scenario.name}: baseline run {i + 1} ended {status} "
                    f"with {why or 'no reason'!r}, expected a reason containing {reason!r}"
                )
            runs.append(Baseline(scenario, recs, workspace_files(ws), status))
    a, b = runs
    na, nb = [normalise(r) for r in a.records], [normalise(r) for r in b.records]
    if len(na) != len(nb) or na != nb:
        k = next(
            (i for i, (x, y) in enumerate(zip(na, nb, strict=False)) if x != y),
            min(len(na), len(nb)),
        )
        raise UsageError(
            f"scenario {scenario.name}: two clean runs differ at record {k + 1} "
            f"({len(na)} vs {len(nb)} records): offsets would not name the same point"
        )
    if a.files != b.files:
        raise UsageError(f"scenario {scenario.name}: two clean runs left different files")
    return a


def _final_status(records: list[dict[str, Any]]) -> str:
    """How the ledger says the run stands: the same fold run and resume use."""
    return replay(records).status


def _terminal_events(records: list[dict[str, Any]]) -> list[str]:
    """The agents' terminal events, as scenario.json lists them (``event:status``
    for reviews)."""
    from lorch.protocol import TERMINAL_EVENTS

    out = []
    for r in records:
        e = r.get("event")
        if r.get("kind") != "event" or e not in TERMINAL_EVENTS:
            continue
        if (r.get("from") or {}).get("agent_type") == "system":
            continue
        out.append(f"{e}:{r['status']}" if e == "review.completed" else str(e))
    return out


def _failure_reason(records: list[dict[str, Any]]) -> str:
    for r in reversed(records):
        if r.get("event") in ("system.run_failed", "system.run_aborted"):
            return str((r.get("payload") or {}).get("reason", ""))
    return ""


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


def _alive_agents(records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    out = []
    for r in records:
        if r.get("event") == "system.agent_started":
            pid, pgid = int(r["payload"]["pid"]), int(r["payload"]["pgid"])
            if group_alive(pid, pgid):
                out.append((pid, pgid))
    return out


def check_write_ahead(ws: Path) -> None:
    """No agent may have worked on a command that the ledger does not hold.

    After a simulated power loss the ledger keeps only fsynced bytes. Records
    lorch had written but not yet synced may go (agents' events wait for the
    next fsync: group commit); what must never go is a command an agent saw.
    """
    keys = {r["idempotency_key"] for r in read_records(ws) if r["kind"] == "command"}
    for j in journals(ws):
        if j["state"] == "started" and j["ik"] not in keys:
            raise Broken(
                "write_ahead",
                f"agent started work on {j['ik'][:19]}… which is not in the durable ledger",
            )


def explore(point: Point, baseline: Baseline, opts: Options, workdir: Path) -> Result:
    started = time.monotonic()
    ws = workdir / f"{point.mode}-{point.offset}"
    what = (
        opts.offline.states[point.offset - 1].describe(opts.offline.trace)
        if point.mode == "powercut"
        else baseline.describe(point.offset)
    )
    result = Result(point, what, "pass")
    try:
        _explore(point, baseline, opts, ws)
    except Broken as b:
        result.verdict, result.invariant, result.detail = "fail", b.invariant, b.detail
    result.seconds = time.monotonic() - started
    if result.verdict == "fail" and opts.keep_failed is not None:
        dest = opts.keep_failed / ws.name
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(ws, dest, symlinks=True)
        result.workspace = str(dest)
    shutil.rmtree(ws, ignore_errors=True)
    return result


def _explore(point: Point, baseline: Baseline, opts: Options, ws: Path) -> None:
    if point.mode != "powercut":  # a crash state brings its own files
        scenarios.materialize(baseline.scenario, ws)
    answers = scenario_args(baseline.scenario)
    run_args = [*lorch_argv(), "run", "--workspace", str(ws), *answers]
    resume_args = [*lorch_argv(), "resume", "--workspace", str(ws), *answers]
    if point.mode == "external":
        _external_crash(point, baseline, opts, ws, run_args)
    elif point.mode == "corrupt":
        _corrupt_middle_line(point, baseline, opts, ws, run_args)
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
        PROCS.run(run_args, _env(opts.extra_env, f"{FAILPOINT[point.mode]}:{point.offset}"))
    check_write_ahead(ws)
    receipts = invariants.receipt_files(ws)
    if point.mode == "double" and _final_status(read_records(ws)) == "running":
        path = the_ledger(ws)
        n = ledger.scan(path).records if path is not None else 0
        PROCS.run(resume_args, _env(opts.extra_env, f"after:{n + 1}"))
        check_write_ahead(ws)
    for _ in range(5):
        # Killed before its first record was durable, a run left nothing to
        # resume (lorch says so): what its user does then is run it again.
        args = resume_args if the_ledger(ws) is not None else run_args
        rc = PROCS.run(args, _env(opts.extra_env, None))
        if rc != -signal.SIGKILL:
            break
    check_invariants(ws, baseline, receipts)


def _corrupt_middle_line(
    point: Point, baseline: Baseline, opts: Options, ws: Path, args: list[str]
) -> None:
    """Crash after record k+1, damage line k (a middle line, never the last), resume.

    A damaged line that is not the last cannot be a torn append: resume must
    stop at once with one line naming the file and line, and change nothing.
    """
    last = min(point.offset + 1, baseline.n)
    line = min(point.offset, baseline.n - 1)
    PROCS.run(args, _env(opts.extra_env, f"after:{last}" if last < baseline.n else None))
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
        env=_env(opts.extra_env, None),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=RUN_TIMEOUT,
        start_new_session=True,
    )
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


def check_receipts_before_end(ws: Path) -> None:
    """A durable end of run comes after every receipt is durable (the runner
    flushes receipts before it records the end): a crash state whose ledger says
    the run is over holds every receipt already, before any resume."""
    recs = read_records(ws)
    if _final_status(recs) == "running":
        return
    folded = invariants.fold(recs)
    try:
        have = {data.get("idempotency_key") for _, data in store.iter_receipts(ws)}
    except StorageError as e:  # a receipt's name survived its data: a verdict, not a crash
        raise Broken("receipts_before_end", str(e)) from None
    missing = [p for p in folded.accepted if p.ik not in have]
    if missing:
        raise Broken(
            "receipts_before_end",
            f"the durable ledger records the end of the run, but the receipt of "
            f"{missing[0].command['action']} is not on disk",
        )


def check_decisions_once(recs: list[dict[str, Any]]) -> None:
    """No question was answered twice: resume never asks what the ledger answers."""
    seen: set[str] = set()
    for r in recs:
        if r.get("event") == "system.user_decision":
            question = str((r.get("payload") or {}).get("question"))
            if question in seen:
                raise Broken(
                    "decisions_once", f"the user was asked {question[:40]!r} a second time"
                )
            seen.add(question)


def check_orphans(recs: list[dict[str, Any]], ws: Path) -> None:
    """No agent of a crashed run may still work once a resume has begun.

    Resume must end the crashed run's agents before it starts new ones; an
    agent it left running shows up as journal lines written after the
    ``system.resumed`` record by a pid that lorch started before it.
    """
    old: set[int] = set()
    entries = journals(ws)
    for r in recs:
        if r.get("event") == "system.agent_started":
            old.add(int(r["payload"]["pid"]))
        elif r.get("event") == "system.resumed":
            at = r["occurred_at"]
            late = [j for j in entries if j["pid"] in old and j["at"] > at]
            if late:
                j = late[0]
                raise Broken(
                    "orphans_ended",
                    f"agent pid {j['pid']} of the crashed run was still working "
                    f"({j['state']} {j['ik'][:19]}…) after resume began",
                )


def _external_crash(
    point: Point, baseline: Baseline, opts: Options, ws: Path, args: list[str]
) -> None:
    rng = random.Random(f"{opts.seed}:{point.offset}")
    delay = rng.uniform(0.0, 1.5)
    proc = procs.spawn(
        args,
        env=_env(opts.extra_env, None),
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


def _acp_roles(ws: Path) -> set[str]:
    try:
        agents = json.loads((ws / "lorch.json").read_text(encoding="utf-8")).get("agents", {})
    except (OSError, ValueError):
        return set()
    return {role for role, spec in agents.items() if spec.get("transport") == "acp"}


def check_invariants(
    ws: Path, baseline: Baseline, receipts_before: dict[str, bytes] | None = None
) -> None:
    """Every invariant of a resumed run. ``receipts_before``: the receipt files
    the crash left (read before the first resume), which must survive unchanged."""
    try:
        recs = read_records(ws, strict=True)
    except LedgerError as e:
        raise Broken("ledger_replays", str(e)) from None
    status = _final_status(recs)
    if status != baseline.status:
        raise Broken("completed", f"run ended {status}, baseline ended {baseline.status}")
    # A command resent keeps its key. Intake's commands share one correlation id
    # and differ by their inputs (each answer of the user makes a new key).
    corr_keys: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for r in recs:
        if r["kind"] == "command":
            sent = (r["correlation_id"], canonical_json([r["action"], r["inputs"]]))
            corr_keys[sent].add(r["idempotency_key"])
    for (corr, _), keys in corr_keys.items():
        if len(keys) > 1:
            raise Broken("one_key_per_command", f"{corr} was sent with {len(keys)} different keys")
    effects_log = scenarios.load(baseline.scenario).get("effects_log")
    problem = effects_problem(ws, recs, effects_log) if effects_log else None
    if problem:
        raise Broken("effects_once", problem)
    check_decisions_once(recs)
    path = the_ledger(ws)
    assert path is not None
    if status == "completed":
        from lorch.verify import verify

        problems = [f"{k}: {v[0]}" for k, v in verify(ws, path.stem).items() if v]
        if problems:
            raise Broken("verify", problems[0])
    files = workspace_files(ws)
    if files != baseline.files:
        diff = sorted(set(files.items()) ^ set(baseline.files.items()))
        raise Broken("files_equal", f"workspace differs from baseline at {diff[0][0]}")
    ledger_ids = {r["message_id"] for r in recs}
    for p in sorted(ws.glob("receipts/*/step-*.json")):
        receipt = json.loads(p.read_text())
        missing = [e for e in receipt["event_ids"] if e not in ledger_ids]
        if missing:
            raise Broken(
                "receipts_match", f"{p.name} names event {missing[0]} that is not in the ledger"
            )
    done = collections.Counter(j["ik"] for j in journals(ws) if j["state"] == "completed")
    twice = [k for k, c in done.items() if c > 1]
    if twice:
        raise Broken(
            "no_duplicate_work", f"work for {twice[0][:19]}… was completed {done[twice[0]]} times"
        )
    # ACP agents see no key (ACP has none) and keep no journal: only the roles
    # that speak lorch's protocol can be asked to have done each key once.
    acp_roles = _acp_roles(ws)
    keys = {
        r["idempotency_key"]
        for r in recs
        if r["kind"] == "command" and r["to"]["agent_type"] not in acp_roles
    }
    never = sorted(k for k in keys if done[k] == 0)
    if never and (ws / ".mockagent").is_dir():
        raise Broken(
            "keys_completed_once",
            f"{never[0][:19]}… is in the ledger but its work was never completed",
        )
    check_orphans(recs, ws)
    strays = _alive_agents(recs)
    if strays:
        raise Broken("no_stray_processes", f"agent pid {strays[0][0]} outlived the run")
    folded = invariants.fold(recs)
    invariants.check_commands_match_baseline(recs, baseline.records)
    invariants.check_receipts_complete(ws, folded)
    invariants.check_receipts_write_once(ws, receipts_before or {})
    invariants.check_snapshot_once(recs, baseline.records)
    invariants.check_no_stale_temp_files(ws)


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
                baseline.scenario, _env(opts.extra_env, None), rec, opts.torn_bytes, opts.cuts
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
