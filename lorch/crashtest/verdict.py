"""The verdict on a crashed and resumed run: every invariant, in order.

:func:`check_invariants` reads what the last resume left once (:class:`Resumed`)
and runs the table :data:`AFTER_RESUME` of named checks on it; the first that
fails raises :class:`~lorch.crashtest.invariants.Broken` with its name. The
checks that look at the crash itself, before any resume (``write_ahead``,
``receipts_before_end``), and ``stops_on_corruption`` (the corrupt mode's own
verdict) are called by the harness where it needs them.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from lorch.agents import registry
from lorch.agents.procs import group_alive
from lorch.app import scenarios
from lorch.crashtest import invariants
from lorch.crashtest.baseline import Baseline
from lorch.crashtest.effects import effects_problem
from lorch.crashtest.invariants import Broken, Folded
from lorch.crashtest.workspace import (
    final_status,
    journals,
    read_records,
    the_ledger,
    workspace_files,
)
from lorch.wire.canonical import canonical_json
from lorch.wire.errors import LedgerError

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


@dataclass
class Resumed:
    """What the last resume left, read once for every check."""

    ws: Path
    baseline: Baseline
    recs: list[dict[str, Any]]
    receipts_before: dict[str, bytes]  # the receipt files the crash left

    @cached_property
    def status(self) -> str:
        return final_status(self.recs)

    @cached_property
    def done(self) -> collections.Counter[str]:
        """How many times the agents' journals say each key's work was completed."""
        return collections.Counter(j["ik"] for j in journals(self.ws) if j["state"] == "completed")

    _folded: Folded | None = None

    def fold(self) -> Folded:
        """The reducer's fold of the ledger, made once; it fails
        ``no_command_after_answer`` on the way."""
        if self._folded is None:
            self._folded = invariants.fold(self.recs)
        return self._folded


def check_invariants(
    ws: Path, baseline: Baseline, receipts_before: dict[str, bytes] | None = None
) -> None:
    """Every invariant of a resumed run. ``receipts_before``: the receipt files
    the crash left (read before the first resume), which must survive unchanged."""
    try:
        recs = read_records(ws, strict=True)
    except LedgerError as e:
        raise Broken("ledger_replays", str(e)) from None
    run = Resumed(ws, baseline, recs, receipts_before or {})
    for _name, check in AFTER_RESUME:
        check(run)


def _completed(run: Resumed) -> None:
    if run.status != run.baseline.status:
        raise Broken("completed", f"run ended {run.status}, baseline ended {run.baseline.status}")


def _one_key_per_command(run: Resumed) -> None:
    """A command resent keeps its key. Intake's commands share one correlation id
    and differ by their inputs (each answer of the user makes a new key)."""
    corr_keys: dict[tuple[str, str], set[str]] = collections.defaultdict(set)
    for r in run.recs:
        if r["kind"] == "command":
            sent = (r["correlation_id"], canonical_json([r["action"], r["inputs"]]))
            corr_keys[sent].add(r["idempotency_key"])
    for (corr, _), keys in corr_keys.items():
        if len(keys) > 1:
            raise Broken("one_key_per_command", f"{corr} was sent with {len(keys)} different keys")


def _effects_once(run: Resumed) -> None:
    effects_log = scenarios.load(run.baseline.scenario).get("effects_log")
    problem = effects_problem(run.ws, run.recs, effects_log) if effects_log else None
    if problem:
        raise Broken("effects_once", problem)


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


def _verified(run: Resumed) -> None:
    path = the_ledger(run.ws)
    assert path is not None
    if run.status == "completed":
        from lorch.app.verify import verify

        problems = [f"{k}: {v[0]}" for k, v in verify(run.ws, path.stem).items() if v]
        if problems:
            raise Broken("verify", problems[0])


def _files_equal(run: Resumed) -> None:
    files = workspace_files(run.ws)
    if files != run.baseline.files:
        diff = sorted(set(files.items()) ^ set(run.baseline.files.items()))
        raise Broken("files_equal", f"workspace differs from baseline at {diff[0][0]}")


def _receipts_match(run: Resumed) -> None:
    ledger_ids = {r["message_id"] for r in run.recs}
    for p in sorted(run.ws.glob("receipts/*/step-*.json")):
        receipt = json.loads(p.read_text())
        missing = [e for e in receipt["event_ids"] if e not in ledger_ids]
        if missing:
            raise Broken(
                "receipts_match", f"{p.name} names event {missing[0]} that is not in the ledger"
            )


def _no_duplicate_work(run: Resumed) -> None:
    twice = [k for k, c in run.done.items() if c > 1]
    if twice:
        raise Broken(
            "no_duplicate_work",
            f"work for {twice[0][:19]}… was completed {run.done[twice[0]]} times",
        )


def _keyless_roles(ws: Path) -> set[str]:
    """The roles whose transport shows its agents no idempotency key (ACP)."""
    try:
        agents = json.loads((ws / "lorch.json").read_text(encoding="utf-8")).get("agents", {})
    except (OSError, ValueError):
        return set()
    kinds = {
        role: registry.TRANSPORTS.get(str(spec.get("transport", registry.DEFAULT.name)))
        for role, spec in agents.items()
    }
    return {role for role, kind in kinds.items() if kind is not None and kind.checkpointed_turns}


def _keys_completed_once(run: Resumed) -> None:
    # ACP agents see no key (ACP has none) and keep no journal: only the roles
    # that speak lorch's protocol can be asked to have done each key once.
    keyless = _keyless_roles(run.ws)
    keys = {
        r["idempotency_key"]
        for r in run.recs
        if r["kind"] == "command" and r["to"]["agent_type"] not in keyless
    }
    never = sorted(k for k in keys if run.done[k] == 0)
    if never and (run.ws / ".mockagent").is_dir():
        raise Broken(
            "keys_completed_once",
            f"{never[0][:19]}… is in the ledger but its work was never completed",
        )


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


def _alive_agents(records: list[dict[str, Any]]) -> list[tuple[int, int]]:
    out = []
    for r in records:
        if r.get("event") == "system.agent_started":
            pid, pgid = int(r["payload"]["pid"]), int(r["payload"]["pgid"])
            if group_alive(pid, pgid):
                out.append((pid, pgid))
    return out


def _no_stray_processes(run: Resumed) -> None:
    strays = _alive_agents(run.recs)
    if strays:
        raise Broken("no_stray_processes", f"agent pid {strays[0][0]} outlived the run")


def _no_command_after_answer(run: Resumed) -> None:
    run.fold()


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


Check = Callable[[Resumed], None]

# The checks after the last resume, in the order they run: the name is the
# invariant the check raises :class:`Broken` with.
AFTER_RESUME: tuple[tuple[str, Check], ...] = (
    ("completed", _completed),
    ("one_key_per_command", _one_key_per_command),
    ("effects_once", _effects_once),
    ("decisions_once", lambda run: check_decisions_once(run.recs)),
    # Before verify, which also checks each receipt against the ledger's chain
    # (receipts_in_ledger): a receipt naming an event the ledger lacks is this one.
    ("receipts_match", _receipts_match),
    ("verify", _verified),
    ("files_equal", _files_equal),
    ("no_duplicate_work", _no_duplicate_work),
    ("keys_completed_once", _keys_completed_once),
    ("orphans_ended", lambda run: check_orphans(run.recs, run.ws)),
    ("no_stray_processes", _no_stray_processes),
    ("no_command_after_answer", _no_command_after_answer),
    (
        "commands_match_baseline",
        lambda run: invariants.check_commands_match_baseline(run.recs, run.baseline.records),
    ),
    ("receipts_complete", lambda run: invariants.check_receipts_complete(run.ws, run.fold())),
    (
        "receipts_write_once",
        lambda run: invariants.check_receipts_write_once(run.ws, run.receipts_before),
    ),
    (
        "snapshot_once",
        lambda run: invariants.check_snapshot_once(run.recs, run.baseline.records),
    ),
    ("no_stale_temp_files", lambda run: invariants.check_no_stale_temp_files(run.ws)),
)
