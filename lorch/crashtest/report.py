"""Reports of a crash test: terminal table, summary line, JSON, JUnit XML."""

from __future__ import annotations

from pathlib import Path

from lorch.crashtest.baseline import Baseline
from lorch.crashtest.harness import Result
from lorch.testing import reports


def table(results: list[Result]) -> str:
    rows = [("offset", "mode", "record at k", "verdict", "first broken invariant")]
    for r in results:
        broken = f"{r.invariant}: {r.detail}" if r.invariant else ""
        rows.append((str(r.point.offset), r.point.mode, r.record, r.verdict.upper(), broken))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = []
    for row in rows:
        lines.append(
            "  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)) + "  " + row[4]
        )
    return "\n".join(line.rstrip() for line in lines)


def summary(results: list[Result], seconds: float, *, partial: bool = False) -> str:
    failed = sum(r.verdict == "fail" for r in results)
    rate = len(results) / seconds if seconds > 0 else 0.0
    tail = " (interrupted: partial)" if partial else ""
    return (
        f"{len(results)} points explored, {len(results) - failed} passed, {failed} failed "
        f"in {seconds:.1f} s ({rate:.1f} points/s){tail}"
    )


def reproduce(scenario: str, r: Result) -> str:
    return f"lorch crashtest {scenario} --modes {r.point.mode} --offsets {r.point.offset}"


def to_json(
    path: Path, scenario: str, baseline: Baseline, results: list[Result], seconds: float
) -> None:
    reports.write_json(
        path,
        {
            "scenario": scenario,
            "baseline_records": baseline.n,
            "seconds": round(seconds, 3),
            "passed": sum(r.verdict == "pass" for r in results),
            "failed": sum(r.verdict == "fail" for r in results),
            "points": [
                {
                    "offset": r.point.offset,
                    "mode": r.point.mode,
                    "record": r.record,
                    "verdict": r.verdict,
                    "invariant": r.invariant or None,
                    "detail": r.detail or None,
                    "seconds": round(r.seconds, 3),
                    "workspace": r.workspace,
                    "reproduce": reproduce(scenario, r),
                }
                for r in results
            ],
        },
    )


def to_junit(path: Path, scenario: str, results: list[Result], seconds: float) -> None:
    cases = [
        reports.Case(
            classname=f"crashtest.{scenario}.{r.point.mode}",
            name=f"offset {r.point.offset}: {r.record}",
            status="fail" if r.verdict == "fail" else "pass",
            message=f"{r.invariant}: {r.detail}",
            text=reproduce(scenario, r),
            seconds=r.seconds,
        )
        for r in results
    ]
    reports.write_junit(path, f"lorch crashtest {scenario}", cases, seconds)
