"""The clean baseline of a scenario, recorded twice and compared.

Two clean runs must give the same records (volatile fields aside) and leave the
same files, so that "record k" names the same point in every crashed run.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorch.app import scenarios
from lorch.crashtest.launcher import PROCS, lorch_argv, lorch_env
from lorch.crashtest.workspace import final_status, read_records, workspace_files
from lorch.wire.errors import UsageError

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


def normalise(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("*" if k in VOLATILE else normalise(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [normalise(v) for v in value]
    if isinstance(value, str) and value.startswith("run-"):
        return "run-*"
    return value


def scenario_args(scenario: Path) -> list[str]:
    """Extra arguments a scenario gives ``lorch run`` and ``lorch resume`` (scripted answers)."""
    args = scenarios.load(scenario).get("args", [])
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise UsageError(f"{scenario / scenarios.META}: $.args: expected a list of strings")
    return args


def run_clean(scenario: Path, ws: Path, extra_env: dict[str, str]) -> int:
    scenarios.materialize(scenario, ws)
    args = [*lorch_argv(), "run", "--workspace", str(ws), *scenario_args(scenario)]
    return PROCS.run(args, lorch_env(extra_env, None))


def record_baseline(
    scenario_ref: str | Path,
    extra_env: dict[str, str] | None = None,
    scratch: Path | None = None,
) -> Baseline:
    scenario = scenarios.resolve(scenario_ref)
    expected = scenarios.load(scenario).get("expected", {})
    runs = []
    for i in range(2):
        with tempfile.TemporaryDirectory(prefix="lorch-baseline-", dir=scratch) as tmp:
            ws = Path(tmp) / "ws"
            rc = run_clean(scenario, ws, extra_env or {})
            recs = read_records(ws)
            status = final_status(recs)
            which = f"scenario {scenario.name}: baseline run {i + 1}"
            _check_expected(which, expected, recs, status, rc)
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


def _check_expected(
    which: str, expected: dict[str, Any], recs: list[dict[str, Any]], status: str, rc: int
) -> None:
    """A clean run ends as its scenario.json says: status, terminal events, reason."""
    want = expected.get("status", "completed")
    if status != want:
        raise UsageError(f"{which} ended {status} (exit {rc}), expected {want}")
    terminals = expected.get("terminal_events")
    got = _terminal_events(recs)
    if terminals is not None and got != terminals:
        raise UsageError(
            f"{which} answered {', '.join(got) or 'nothing'}; expected {', '.join(terminals)}"
        )
    reason = str(expected.get("reason", ""))
    why = _failure_reason(recs)
    if reason and reason not in why:
        raise UsageError(
            f"{which} ended {status} "
            f"with {why or 'no reason'!r}, expected a reason containing {reason!r}"
        )


def _terminal_events(records: list[dict[str, Any]]) -> list[str]:
    """The agents' terminal events, as scenario.json lists them (``event:status``
    for reviews)."""
    from lorch.wire.vocabulary import TERMINAL_EVENTS

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
