"""Running the battery and writing its reports (table, JSON, JUnit, transcript)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from lorch.conformance.checks import CHECKS
from lorch.conformance.session import CheckOutcome, ConformanceCheck, Session, Verdict
from lorch.testing import reports
from lorch.wire.errors import AgentError, AgentStartError, UsageError


def _not_run(session: Session) -> Verdict:
    return Verdict("skip", "run with --fuzz")


# How long an agent whose stdout reached EOF may take to be reaped.
EXIT_GRACE = 5.0

FUZZ = ConformanceCheck(
    "FUZZ-001",
    "recommended",
    "DESIGN §3, §5.10",
    "generated valid and near-valid commands must each get one answer, never a crash",
    _not_run,
)


@dataclass
class Report:
    outcomes: list[CheckOutcome]
    transcript: str
    seconds: float
    unexpected_passes: list[str]

    @property
    def passed(self) -> bool:
        return not any(o.blocking for o in self.outcomes)


def read_expected(path: Path | None) -> set[str]:
    if path is None:
        return set()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise UsageError(f"{path}: cannot read expected failures: {e.strerror}") from None
    try:
        data = json.loads(text)
    except ValueError:
        data = [ln.split("#")[0].strip() for ln in text.splitlines()]
    ids = {str(x) for x in data if x}
    known = {c.id for c in CHECKS} | {FUZZ.id}
    unknown = sorted(ids - known)
    if unknown:
        raise UsageError(
            f"{path}: unknown check id {unknown[0]!r}; known: {', '.join(sorted(known))}"
        )
    return ids


def run_battery(
    argv: list[str],
    *,
    role: str = "builder",
    workspace: Path | None = None,
    only: list[str] | None = None,
    timeout: float = 10.0,
    expected: set[str] | None = None,
    fuzz_examples: int = 0,
    seed: int = 0,
    checkpoints: bool = False,
) -> Report:
    known = {c.id for c in CHECKS} | {FUZZ.id}
    for c in only or []:
        if c not in known:
            raise UsageError(f"--only {c}: unknown check; known: {', '.join(sorted(known))}")
    started = time.monotonic()
    session = Session(argv, role, workspace, timeout)
    if checkpoints:
        from lorch.conformance.checkpointed import under_checkpoints

        session.agent = under_checkpoints(session.agent, session.workspace)
    expected = expected or set()
    try:
        session.start()
        _ensure_alive(session)
        outcomes = _run_checks(session, only, expected)
        if fuzz_examples and (not only or FUZZ.id in only):
            from lorch.conformance.fuzz import fuzz

            if session.agent.proc is None or session.agent.proc.poll() is not None:
                session.start()
            verdict = fuzz(session, seed=seed, examples=fuzz_examples)
            outcomes.append(CheckOutcome(FUZZ, verdict, expected_failure=FUZZ.id in expected))
        transcript = session.agent.t.dump(session.agent.redactor)
    finally:
        session.close()
    unexpected = [
        o.check.id for o in outcomes if o.check.id in expected and o.verdict.status == "pass"
    ]
    return Report(outcomes, transcript, time.monotonic() - started, unexpected)


def _run_checks(session: Session, only: list[str] | None, expected: set[str]) -> list[CheckOutcome]:
    """Every selected check in order; an agent that died in one is restarted for the next."""
    outcomes: list[CheckOutcome] = []
    for check in CHECKS:
        if only and check.id not in only:
            continue
        try:
            verdict = check.run(session)
        except AgentError:
            raise
        except Exception as e:
            verdict = Verdict("fail", f"check could not complete: {type(e).__name__}: {e}")
        if (
            session.agent.proc is not None
            and session.agent.proc.poll() is not None
            and check.id not in ("LIFE-001", "LIFE-002")
        ):
            session.start()
        outcomes.append(CheckOutcome(check, verdict, expected_failure=check.id in expected))
    return outcomes


def _ensure_alive(session: Session) -> None:
    """The agent must at least start and answer; else exit 2 with the reason.

    Three different reasons, told apart by what was seen rather than by timing:
    its stdout reached EOF (it exited, or closed stdout), it printed only lines
    that are not protocol messages, or it printed nothing before the timeout.
    """
    cmd = session.command()
    ex = session.exchange(cmd, timeout=session.timeout)
    agent = session.agent
    if ex.terminal is None and not ex.heartbeats and not ex.events:
        why = []
        if ex.problems:
            first = ex.problems[0]
            problem = agent.redactor.text(first.problem or "")
            why.append(f"printed garbage (transcript line {first.n}: {problem})")
        if agent.stdout_closed:
            # EOF on stdout comes a moment before the process can be reaped: wait
            # for the exit status itself instead of sampling it once.
            rc = agent.wait(EXIT_GRACE)
            why.append(
                f"exited with code {rc}"
                if rc is not None
                else f"closed its stdout and was still running {EXIT_GRACE:g} s later"
            )
            for th in agent.threads:  # its last stderr words
                th.join(timeout=EXIT_GRACE)
        if not why:
            why.append(f"printed nothing in {session.timeout:g} s")
        tail = agent.stderr_tail()
        session.close()
        raise AgentStartError(
            f"agent {session.argv[0]!r} {' and '.join(why)}" + (f"; stderr: {tail}" if tail else "")
        )
    session.cache["baseline"] = ex


def table(report: Report) -> str:
    rows = [("check", "severity", "verdict", "evidence")]
    for o in report.outcomes:
        v = o.verdict.status.upper() + (
            " (expected)" if o.expected_failure and o.verdict.status == "fail" else ""
        )
        where = (
            f" [transcript lines {', '.join(map(str, o.verdict.lines[:5]))}]"
            if o.verdict.lines and o.verdict.status == "fail"
            else ""
        )
        rows.append((o.check.id, o.check.severity, v, o.verdict.evidence + where))
    w = [max(len(r[i]) for r in rows) for i in range(3)]
    return "\n".join(
        f"{r[0]:<{w[0]}}  {r[1]:<{w[1]}}  {r[2]:<{w[2]}}  {r[3]}".rstrip() for r in rows
    )


def summary(report: Report) -> str:
    counts = {
        s: sum(o.verdict.status == s for o in report.outcomes) for s in ("pass", "fail", "skip")
    }
    verdict = "CONFORMS" if report.passed else "DOES NOT CONFORM"
    line = (
        f"{verdict}: {counts['pass']} passed, {counts['fail']} failed, "
        f"{counts['skip']} not applicable in {report.seconds:.1f} s"
    )
    if report.unexpected_passes:
        line += (
            f"; listed as expected failures but passing now: {', '.join(report.unexpected_passes)}"
        )
    return line


def to_json(path: Path, report: Report) -> None:
    reports.write_json(
        path,
        {
            "conforms": report.passed,
            "seconds": round(report.seconds, 3),
            "unexpected_passes": report.unexpected_passes,
            "checks": [
                {
                    "id": o.check.id,
                    "severity": o.check.severity,
                    "rule": o.check.rule,
                    "why": o.check.why,
                    "verdict": o.verdict.status,
                    "expected_failure": o.expected_failure,
                    "evidence": o.verdict.evidence,
                    "transcript_lines": o.verdict.lines,
                }
                for o in report.outcomes
            ],
        },
    )


def to_junit(path: Path, report: Report) -> None:
    cases = [
        reports.Case(
            classname=f"conformance.{o.check.severity}",
            name=o.check.id,
            status=o.verdict.status,
            message=o.verdict.evidence,
            text=o.check.why,
        )
        for o in report.outcomes
    ]
    reports.write_junit(path, "lorch conformance", cases, report.seconds)
