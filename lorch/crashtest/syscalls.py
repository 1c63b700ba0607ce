"""Crash states from the system calls that really reached the kernel (ALICE-style).

The power-loss failpoint keeps whatever lorch's own counter says is synced, so
it trusts the code under test. The ``powercut`` mode does not: it records one
clean run of a scenario under ``strace -f`` (``strace.py``: lorch and its
agents, the trace turned into file-system operations on inodes), derives every
state a power cut could leave on disk under a simple, documented persistence
model (``states.py``), and deduplicates them by content. This module prepares
that (:func:`prepare`) and writes each distinct state into a fresh workspace
(:func:`materialize_state`), where the harness checks it, resumes it (forked
from the warm server) and checks it against the baseline with its invariants.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from lorch.crashtest.states import Cut, counted_states, materialize, order
from lorch.crashtest.strace import Trace, record

_RECEIPT = re.compile(r"^receipts/[^/]+/step-\d+\.json$")


def receipt_rewrites(trace: Trace) -> list[tuple[int, str]]:
    """Operations of the trace that could destroy a receipt: (op index, what).

    A receipt is write-once, so its name must be created exclusively (a link
    of a finished temp file, which fails on a taken name). A rename onto a
    receipt name replaces whatever the name held, a write to a receipt already
    in place changes it, an unlink removes it: each is reported, whether or not
    the name happened to be free in the recorded run (single-writer outcomes
    cannot tell a replacing create from an exclusive one; the call can).
    """
    paths: dict[int, str] = {trace.root: ""}
    stack = [trace.root]
    while stack:
        ino = stack.pop()
        for name, child in trace.initial[ino].entries.items():
            node = trace.initial.get(child)
            if node is not None and node.is_dir:
                paths[child] = f"{paths[ino]}{name}/"
                stack.append(child)
    dirs = {op.obj for op in trace.ops if op.kind in ("entry", "dirsync")}
    placed: dict[int, str] = {}
    out: list[tuple[int, str]] = []
    for i, op in enumerate(trace.ops):
        if op.kind in ("write", "trunc") and op.obj in placed:
            out.append((i, f"{placed[op.obj]} was written after it was in place"))
            continue
        if op.kind != "entry" or op.entry is None:
            continue
        action, name, ino, _, _ = op.entry
        base = paths.get(op.obj)
        if base is None:
            continue
        rel = base + name
        if ino in dirs and action != "unlink":
            paths[ino] = rel + "/"
        if not _RECEIPT.match(rel):
            continue
        if action == "rename":
            out.append((i, f"{rel} was put in place by a rename, which replaces a taken name"))
        elif action == "unlink":
            out.append((i, f"{rel} was removed"))
        else:
            placed[ino] = rel
    return out


_PID = re.compile(rb'("(?:pid|pgid)":\s*)(\d+)')


def disarm_pids(files: dict[str, bytes | None], recorded: set[int]) -> None:
    """Point the recorded agents' pids at the harness itself.

    The recording run's agents are long gone and their pids may belong to any
    process by now (every agent leads its own group, so a recycled pid can pass
    resume's pid-and-group check). With the harness's own pid and the old group,
    the check fails for sure and resume kills nothing.
    """
    me = str(os.getpid()).encode()
    for rel, data in files.items():
        if data is None or not (rel.startswith("events/") or rel.startswith("state/")):
            continue
        files[rel] = _PID.sub(
            lambda m: (
                m.group(1)
                + (
                    me
                    if m.group(1).startswith(b'"pid"') and int(m.group(2)) in recorded
                    else m.group(2)
                )
            ),
            data,
        )


def agent_pids(trace: Trace) -> set[int]:
    """Every pid (and thread id) seen in the trace: lorch's and its agents'."""
    return {op.pid for op in trace.ops}


def write_state(files: dict[str, bytes | None], ws: Path) -> None:
    ws.mkdir(parents=True)
    for rel, data in sorted(files.items()):
        p = ws / rel
        if data is None:
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            os.chmod(p, 0o600)


@dataclass
class Offline:
    trace: Trace
    enumerated: int
    states: list[Cut]
    seconds_enumerating: float
    chosen: list[int]  # numbers (1-based) of the states to explore; numbering is of all
    # Operations that could destroy a receipt (receipt_rewrites), found once per trace.
    rewrites: list[tuple[int, str]] = field(default_factory=list)
    # For each distinct state, how many enumerated cuts leave exactly its files.
    covers: dict[Cut, int] = field(default_factory=dict)

    def covered(self, numbers: list[int]) -> int:
        """Enumerated states answered by exploring the given distinct states."""
        return sum(self.covers.get(self.states[k - 1], 1) for k in numbers)


CUTS = ("all", "lost")


def prepare(
    scenario_ref: str | Path,
    env: dict[str, str],
    workdir: Path,
    torn_bytes: str = "edges",
    which: str = "all",
) -> Offline:
    """Record the scenario under strace and enumerate its distinct crash states.

    ``which="lost"`` keeps only the states where every unsynced operation is
    lost (the strictest power cut at each prefix): a quick first pass.
    """
    trace = record(scenario_ref, env, workdir)
    started = time.monotonic()
    n, distinct, covers = counted_states(trace, torn_bytes)
    states = order(trace, distinct)
    chosen = [i for i, c in enumerate(states, start=1) if which == "all" or c.keep == ((-1, 0),)]
    return Offline(
        trace, n, states, time.monotonic() - started, chosen, receipt_rewrites(trace), covers
    )


def materialize_state(off: Offline, k: int, ws: Path) -> Cut:
    """Write state ``k`` (1-based) into ``ws``; return its cut."""
    cut = off.states[k - 1]
    files = materialize(off.trace, cut)
    disarm_pids(files, agent_pids(off.trace))
    write_state(files, ws)
    return cut
