"""The intake stage of the reducer, driven on plain records (no processes, no files).

A tiny in-memory engine plays lorch's part: it appends what ``next_step`` asks
for, answers commands from a scripted agent and questions from a scripted user.
Cutting its ledger at every offset and driving on from the prefix is what a
crash and ``lorch resume`` do; the tests check the run still ends the same way
and that no question is ever asked twice.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from lorch.core import intake
from lorch.core.intake import CORRELATION, Ask, Discover, interpret
from lorch.core.state import State
from lorch.core.steps import Check, Finish, Send, StartTask
from lorch.core.workflow import next_step
from lorch.engine.recorder import system_event

Record = dict[str, Any]
Agent = Callable[[Record], Record]

_ids = itertools.count()
DISCOVERY = {
    "strategy": "lorch-heuristic/1",
    "search_paths": [".", "docs", "specs", "plans"],
    "candidates": [{"path": "PLAN.md", "score": 50, "headings": ["Plan"]}],
}


def fresh(action: str) -> tuple[str, str]:
    return f"cmd-{next(_ids)}", "2030-01-01T00:00:00Z"


def event(cmd: Record, name: str, payload: Record, status: str | None = None) -> Record:
    ev: Record = {
        "kind": "event",
        "message_id": f"evt-{next(_ids)}",
        "correlation_id": cmd["correlation_id"],
        "task_id": cmd["task_id"],
        "from": {"agent_type": cmd["to"]["agent_type"]},
        "event": name,
        "payload": payload,
        "occurred_at": "2030-01-01T00:00:00Z",
    }
    if status is not None:
        ev["status"] = status
    return ev


def system(name: str, payload: Record, status: str | None = None) -> Record:
    return system_event(name, payload, CORRELATION, "intake", status)


PROPOSAL = {
    "plan_candidates": [
        {"path": "docs/old.md", "confidence": 0.4},
        {"path": "PLAN.md", "confidence": 0.9},
    ],
    "derived_tasks": [
        {"id": "T-1", "title": "First part", "files": ["src/a.py"]},
        {"id": "T-2", "title": "Second part", "description": "Do b"},
    ],
}


def agent(cmd: Record) -> Record:
    """Clarification first, then a proposal; the build loop approves at once."""
    action = cmd["action"]
    if action == "intake":
        if "clarifications" not in cmd["inputs"]:
            return event(cmd, "orchestration.needs_clarification", {"questions": ["Which module?"]})
        return event(cmd, "orchestration.proposed_tasks", PROPOSAL)
    if action == "task_discovery":
        more = {**PROPOSAL, "derived_tasks": [{"id": "T-9", "title": "More"}]}
        return event(cmd, "orchestration.proposed_tasks", more)
    if action in ("implement", "implement_changes"):
        return event(cmd, "builder.completed", {"tests": {"status": "pass"}}, "success")
    if action == "review":
        return event(cmd, "review.completed", {}, "approved")
    return event(cmd, "spec.updated", {})


def start() -> list[Record]:
    return [
        system(
            "system.run_started",
            {"run_id": "run-1", "task": {"id": "intake"}, "policy": {}, "intake": True},
        ),
        system("system.snapshot", {"snapshot_id": "snap-000000000001"}),
    ]


def drive(
    ledger: list[Record],
    answers: dict[str, str | None],
    agent: Agent = agent,
    limit: int = 200,
) -> tuple[list[Record], Finish, list[str]]:
    """Drive the reducer from ``ledger`` to the end; return it, the finish and questions asked."""
    state = State()
    for r in ledger:
        state.fold(r)
    asked: list[str] = []
    cache: dict[str, Record] = {}

    def add(r: Record) -> None:
        ledger.append(r)
        state.fold(r)

    for _ in range(limit):
        step = next_step(state, fresh=fresh)
        if isinstance(step, Finish):
            return ledger, step, asked
        if isinstance(step, Check):
            state.accept()
        elif isinstance(step, Send):
            add(step.command)
            ik = step.command["idempotency_key"]
            # An idempotent agent: the same key gets the same answer (errors are not kept).
            answer = cache[ik] if ik in cache else agent(step.command)
            if answer["event"] != "error":
                cache[ik] = answer
            add({**answer, "correlation_id": step.command["correlation_id"]})
        elif isinstance(step, Discover):
            add(system("system.discovery", {"metadata": DISCOVERY}))
        elif isinstance(step, Ask):
            q = step.question
            asked.append(q.id)
            key = q.step if q.step != "clarification" else f"clarification{q.ordinal}"
            d = interpret(q, answers[key], "stdin")
            assert not isinstance(d, str), d
            add(system("system.user_decision", d.payload, d.status))
        elif isinstance(step, StartTask):
            add(
                system(
                    "system.task_started",
                    {"task": step.task, "index": step.index, "of": step.of},
                )
            )
        else:
            raise AssertionError(step)
    raise AssertionError("the run did not end")


ANSWERS: dict[str, str | None] = {
    "instruction": "Manage PLAN.md",
    "clarification0": "the greeting module",
    "plan": "1",
    "tasks": "",
}


def commands(ledger: list[Record]) -> list[Record]:
    return [r for r in ledger if r["kind"] == "command"]


def keys(ledger: list[Record]) -> list[str]:
    return list(dict.fromkeys(c["idempotency_key"] for c in commands(ledger)))


def decisions(ledger: list[Record]) -> list[Record]:
    return [r for r in ledger if r.get("event") == "system.user_decision"]


def test_clarification_then_two_tasks_run_one_after_another() -> None:
    ledger, end, asked = drive(start(), ANSWERS)
    assert end == Finish("completed", "")
    cmds = commands(ledger)
    actions = [(c["action"], c["task_id"]) for c in cmds]
    assert actions == [
        ("intake", "intake"),
        ("intake", "intake"),
        *[(a, "T-1") for a in ("implement", "review", "update_spec")],
        *[(a, "T-2") for a in ("implement", "review", "update_spec")],
    ]
    first, second = cmds[0], cmds[1]
    # The answers change the inputs, so the key; the conversation keeps its correlation.
    assert first["idempotency_key"] != second["idempotency_key"]
    assert first["correlation_id"] == second["correlation_id"] == intake.CORRELATION
    assert second["inputs"]["clarifications"] == [
        {"question": "Which module?", "answer": "the greeting module"}
    ]
    assert second["inputs"]["user_instruction"] == "Manage PLAN.md"
    assert second["inputs"]["discovery_metadata"] == DISCOVERY
    # Highest confidence first: "1" is PLAN.md; blank is every task.
    final = decisions(ledger)[-1]
    assert final["status"] == "approved"
    assert final["payload"]["approved_plan"] == "PLAN.md"
    assert final["payload"]["approved_tasks"] == ["T-1", "T-2"]
    # The builder sees the task, its goal and where it came from.
    implement = next(c for c in cmds if c["action"] == "implement" and c["task_id"] == "T-2")
    assert implement["inputs"]["task"] == {
        "id": "T-2",
        "title": "Second part",
        "goal": "Do b",
        "files": [],
        "plan": "PLAN.md",
        "instruction": "Manage PLAN.md",
    }
    assert len(asked) == len(set(asked)) == 4


def test_every_crash_point_resumes_to_the_same_end_without_asking_twice() -> None:
    full, end, _ = drive(start(), ANSWERS)
    for k in range(len(start()), len(full) + 1):
        prefix = [dict(r) for r in full[:k]]
        ledger, again, _asked = drive(prefix, ANSWERS)
        assert again == end, f"cut at {k}"
        qs = [d["payload"]["question"] for d in decisions(ledger)]
        assert len(qs) == len(set(qs)), f"cut at {k}: a question was answered twice"
        # Same keys, in the same order: a resent command keeps its key.
        assert keys(ledger) == keys(full), f"cut at {k}"


def test_more_options_sends_task_discovery_then_asks_again() -> None:
    answers = dict(ANSWERS)
    script = iter(["m", "2"])
    state_answers: dict[str, str | None] = {**answers}

    class Plans(dict[str, str | None]):
        def __getitem__(self, key: str) -> str | None:
            return next(script) if key == "plan" else state_answers[key]

    ledger, end, asked = drive(start(), Plans())
    assert end.status == "completed"
    actions = [c["action"] for c in commands(ledger)]
    assert actions[:3] == ["intake", "intake", "task_discovery"]
    disc = commands(ledger)[2]
    assert disc["inputs"]["context"]["previous_candidates"] == ["docs/old.md", "PLAN.md"]
    assert disc["inputs"]["context"]["round"] == 1
    final = decisions(ledger)[-1]["payload"]
    assert final["approved_plan"] == "docs/old.md"
    assert final["approved_tasks"] == ["T-9"]
    assert len(asked) == len(set(asked))


@pytest.mark.parametrize(
    ("key", "value", "status"),
    [
        ("instruction", None, "declined"),
        ("clarification0", None, "declined"),
        ("plan", "n", "declined"),
        ("tasks", "no", "declined"),
    ],
)
def test_a_decline_ends_the_run_before_any_task(key: str, value: str | None, status: str) -> None:
    ledger, end, _ = drive(start(), {**ANSWERS, key: value})
    assert end.status == "aborted"
    assert "declined by the user" in end.reason
    assert decisions(ledger)[-1]["status"] == status
    assert not [c for c in commands(ledger) if c["task_id"] != "intake"]


def conflicting(cmd: Record) -> Record:
    if cmd["action"] == "intake" and "plan" not in cmd["inputs"]:
        return event(
            cmd,
            "orchestration.plan_conflict",
            {"conflicts": [{"paths": ["PLAN.md", "PLAN-v2.md"], "reason": "both define T-1"}]},
        )
    if cmd["action"] == "intake":
        chosen = cmd["inputs"]["plan"]
        return event(
            cmd,
            "orchestration.proposed_tasks",
            {
                "plan_candidates": [{"path": chosen, "confidence": 1}],
                "derived_tasks": [{"id": "T-1", "title": "x"}],
            },
        )
    return agent(cmd)


def test_plan_conflict_pick_one_then_proceed() -> None:
    answers = {**ANSWERS, "conflict": "2"}
    ledger, end, _ = drive(start(), answers, conflicting)
    assert end.status == "completed"
    second = commands(ledger)[1]
    assert second["action"] == "intake" and second["inputs"]["plan"] == "PLAN-v2.md"
    assert decisions(ledger)[-1]["payload"]["approved_plan"] == "PLAN-v2.md"


def test_plan_conflict_abort() -> None:
    ledger, end, _ = drive(start(), {**ANSWERS, "conflict": "a"}, conflicting)
    assert end.status == "aborted" and "aborted by the user" in end.reason
    assert decisions(ledger)[-1]["status"] == "aborted"
    assert len(commands(ledger)) == 1


def test_plan_conflict_more_options_sends_task_discovery() -> None:
    ledger, end, asked = drive(start(), {**ANSWERS, "conflict": "m"}, conflicting)
    assert end.status == "completed"
    actions = [c["action"] for c in commands(ledger)]
    assert actions[:2] == ["intake", "task_discovery"]
    disc = commands(ledger)[1]
    assert disc["inputs"]["context"]["previous_candidates"] == ["PLAN-v2.md", "PLAN.md"]
    assert disc["idempotency_key"] != commands(ledger)[0]["idempotency_key"]
    conflict = next(d for d in decisions(ledger) if d["payload"]["step"] == "conflict")
    assert conflict["payload"]["more_options"] is True
    assert decisions(ledger)[-1]["payload"]["approved_tasks"] == ["T-9"]
    assert len(asked) == len(set(asked))


def test_malformed_proposal_fails_naming_agent_and_field() -> None:
    def bad(cmd: Record) -> Record:
        return event(
            cmd,
            "orchestration.proposed_tasks",
            {"derived_tasks": [{"id": "T-1", "title": "x"}]},
        )

    _, end, asked = drive(start(), ANSWERS, bad)
    assert end.status == "failed"
    assert end.reason.startswith("agent orchestration: orchestration.proposed_tasks: payload")
    assert "plan_candidates" in end.reason
    assert asked == ["instruction"]


def test_error_event_retried_with_the_same_key_unless_not_retriable() -> None:
    calls: list[str] = []

    def flaky(retriable: bool) -> Agent:
        def answer(cmd: Record) -> Record:
            calls.append(cmd["idempotency_key"])
            if len(calls) == 1:
                return event(cmd, "error", {"code": "temporary", "retriable": retriable})
            return agent(cmd)

        return answer

    ledger, end, _ = drive(start(), ANSWERS, flaky(True))
    assert end.status == "completed"
    assert calls[0] == calls[1]
    assert commands(ledger)[1]["retry"]["attempt"] == 1
    calls.clear()
    _, end, _ = drive(start(), ANSWERS, flaky(False))
    assert end.status == "failed" and "not retriable" in end.reason
    assert len(calls) == 1
