"""FUZZ-001 (optional): generated valid and near-valid commands, from a seed.

Property: every line sent gets exactly one answer — a terminal event, an
``error`` for a near-valid command — and the agent keeps serving. hypothesis
shrinks a failure to the smallest input that shows it. Needs hypothesis
(``pip install 'lorch[fuzz]'``).
"""

from __future__ import annotations

import json
from typing import Any

from lorch.conformance.session import Session, Verdict
from lorch.wire.errors import UsageError

REQUIRED = (
    "message_id",
    "correlation_id",
    "task_id",
    "idempotency_key",
    "to",
    "action",
    "inputs",
    "version",
)


def fuzz(session: Session, *, seed: int, examples: int) -> Verdict:
    try:
        from hypothesis import HealthCheck, Phase, given, settings
        from hypothesis import seed as hseed
        from hypothesis import strategies as st
    except ImportError:
        raise UsageError("--fuzz needs hypothesis: pip install 'lorch[fuzz]'") from None

    values = st.one_of(st.integers(-5, 5), st.text(max_size=12), st.booleans(), st.none())
    inputs = st.dictionaries(st.text(min_size=1, max_size=8), values, max_size=3)
    mutation = st.sampled_from(["none", "drop", "wrong_type", "extra", "bad_key"]) | st.just("none")

    @st.composite
    def commands(draw: Any) -> tuple[str, dict[str, Any]]:
        cmd = session.command(inputs={"round": draw(st.integers(1, 50)), **draw(inputs)})
        how = draw(mutation)
        if how == "drop":
            del cmd[draw(st.sampled_from(REQUIRED))]
        elif how == "wrong_type":
            cmd[draw(st.sampled_from(REQUIRED))] = draw(
                st.integers() | st.lists(st.integers(), max_size=2)
            )
        elif how == "extra":
            cmd["surprise"] = draw(values)
        elif how == "bad_key":
            cmd["idempotency_key"] = "ik:" + draw(st.text(alphabet="0123456789abcdef", max_size=10))
        return how, cmd

    failures: list[tuple[str, dict[str, Any], str]] = []

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )
    @hseed(seed)
    @given(commands())
    def answers_once(case: tuple[str, dict[str, Any]]) -> None:
        how, cmd = case
        problem = _answer_problem(session, how, cmd)
        if problem:
            failures.append((how, cmd, problem))
            raise AssertionError(problem)

    try:
        answers_once()
    except AssertionError:
        _how, cmd, problem = failures[-1]  # hypothesis replays the minimal example last
        return Verdict("fail", f"{problem}; minimal input (seed {seed}): {json.dumps(cmd)[:300]}")
    return Verdict("pass", f"{examples} generated commands (seed {seed}), each answered once")


def _answer_problem(session: Session, how: str, cmd: dict[str, Any]) -> str | None:
    """What is wrong with the agent's answer to ``cmd`` (mutated ``how``), or None."""
    if session.agent.proc is None or session.agent.proc.poll() is not None:
        session.start()
    session.agent.send((json.dumps(cmd) + "\n").encode())
    ex = session.collect(None, session.timeout)
    if ex.terminal is None:
        exited = session.agent.proc is not None and session.agent.proc.poll() is not None
        return "no answer" + (" (the agent exited)" if exited else "")
    if how != "none" and ex.terminal_msg.get("event") != "error":
        got = ex.terminal_msg.get("event")
        return f"a near-valid command ({how}) was answered {got}, not error"
    return None
