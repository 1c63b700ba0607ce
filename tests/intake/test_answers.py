"""Reading answers: flags, stdin lines, end of input, and what each prompt accepts."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from lorch.core import intake
from lorch.core.intake import Question, interpret
from lorch.engine.asking import ConsolePrompter, Flags, decide


def test_questions_read_numbers_paths_and_words() -> None:
    plan = Question("k#plan", "plan", "Which plan?", choices=("A.md", "B.md"), default="1")
    assert interpret(plan, "", "tty").payload["approved_plan"] == "A.md"  # type: ignore[union-attr]
    assert interpret(plan, "B.md", "flag").payload["approved_plan"] == "B.md"  # type: ignore[union-attr]
    assert interpret(plan, "M", "tty").payload["more_options"] is True  # type: ignore[union-attr]
    assert isinstance(interpret(plan, "3", "tty"), str)
    tasks = Question("k#tasks", "tasks", "Which?", choices=("T-1", "T-2", "T-3"), plan="A.md")
    d = interpret(tasks, "3, 1", "tty")
    assert not isinstance(d, str)
    assert d.payload["approved_tasks"] == ["T-1", "T-3"]  # proposal order
    assert d.payload["approved_plan"] == "A.md"
    assert isinstance(interpret(tasks, "1,7", "tty"), str)
    instr = Question("instruction", "instruction", "What should I do?")
    assert isinstance(interpret(instr, "  ", "tty"), str)
    assert interpret(instr, None, "stdin").status == "declined"  # type: ignore[union-attr]


INSTR = Question("instruction", "instruction", "What should I do?")
PLAN = Question("k#plan", "plan", "Which plan?", shown=("  1. A.md",), choices=("A.md", "B.md"))
TASKS = Question("k#tasks", "tasks", "Which tasks?", choices=("T-1", "T-2"), default="all")


def prompter(text: str, flags: Flags | None = None, tty: bool = False) -> ConsolePrompter:
    return ConsolePrompter(flags or Flags(), io.StringIO(text), io.StringIO(), tty=tty)


def test_stdin_one_line_per_prompt_and_invalid_answers_are_asked_again() -> None:
    p = prompter("Manage PLAN.md\n7\n2\n")
    d = decide(p, INSTR)
    assert (d.status, d.payload["answer"], d.payload["source"]) == (
        "approved",
        "Manage PLAN.md",
        "stdin",
    )
    d = decide(p, PLAN)
    assert d.payload["approved_plan"] == "B.md"
    out = p.out.getvalue()  # type: ignore[attr-defined]
    assert "lorch> What should I do? Manage PLAN.md\n" in out
    assert "  1. A.md" in out
    assert "lorch: expected a number from 1 to 2" in out
    assert out.count("  1. A.md") == 1  # the menu is shown once, the prompt again


def test_end_of_input_is_a_decline_recorded_with_its_prompt() -> None:
    d = decide(prompter(""), INSTR)
    assert d.status == "declined"
    assert d.payload == {
        "question": "instruction",
        "step": "instruction",
        "prompt": "What should I do?",
        "answer": None,
        "source": "stdin",
    }


def test_flags_answer_first_and_fall_back_to_stdin_when_invalid() -> None:
    flags = Flags(instruction="Do it", plan="Z.md", tasks="T-2", yes=True, answers=("a0",))
    p = prompter("1\n", flags)
    assert decide(p, INSTR).payload["source"] == "flag"
    d = decide(p, PLAN)  # Z.md is not a candidate: the prompt asks stdin
    assert (d.payload["approved_plan"], d.payload["source"]) == ("A.md", "stdin")
    assert decide(p, TASKS).payload["approved_tasks"] == ["T-2"]
    clar = Question("k#q1", "clarification", "Which?", ordinal=0)
    assert decide(p, clar).payload["answer"] == "a0"
    later = Question("k2#q1", "clarification", "And?", ordinal=1)
    assert decide(p, later).status == "declined"  # no more flags, stdin at its end


def test_yes_accepts_the_proposal_but_not_a_conflict() -> None:
    p = prompter("", Flags(yes=True))
    assert decide(p, PLAN).payload["approved_plan"] == "A.md"
    assert decide(p, TASKS).payload["approved_tasks"] == ["T-1", "T-2"]
    conflict = Question("k#conflict", "conflict", "Which plan?", choices=("A.md",))
    assert decide(p, conflict).status == "declined"  # asked, and stdin is at its end


def test_decisions_match_the_event_schema() -> None:
    from lorch.wire import schemas

    for q, text in ((INSTR, "x"), (PLAN, "m"), (TASKS, "")):
        d = interpret(q, text, "tty")
        assert not isinstance(d, str)
        record = {
            "kind": "event",
            "message_id": "evt-1",
            "correlation_id": intake.CORRELATION,
            "task_id": intake.INTAKE_TASK,
            "from": {"agent_type": "system"},
            "event": "system.user_decision",
            "status": d.status,
            "payload": d.payload,
            "occurred_at": "2030-01-01T00:00:00Z",
        }
        assert schemas.errors("event", record) == []
        assert schemas.is_valid("event", record)
        for broken in ({**record, "status": "maybe"}, {**record, "payload": {}}):
            assert not schemas.is_valid("event", broken)
            assert schemas.errors("event", broken)


Record = dict[str, Any]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"plan_candidates": [], "derived_tasks": []}, "plan_candidates"),
        (
            {"plan_candidates": [{"path": "P", "confidence": 2}], "derived_tasks": []},
            "plan_candidates[0].confidence",
        ),
        (
            {"plan_candidates": [{"path": "P", "confidence": 1}], "derived_tasks": [{"id": "x"}]},
            "derived_tasks[0]",
        ),
        (
            {
                "plan_candidates": [{"path": "P", "confidence": 1}],
                "derived_tasks": [{"id": "../x", "title": "t"}],
            },
            "derived_tasks[0].id",
        ),
        (
            {
                "plan_candidates": [{"path": "P", "confidence": 1}],
                "derived_tasks": [{"id": "T", "title": "t"}, {"id": "T", "title": "u"}],
            },
            "appears twice",
        ),
    ],
)
def test_answer_problems_name_the_field(payload: Record, field: str) -> None:
    problem = intake.answer_problem({"event": "orchestration.proposed_tasks", "payload": payload})
    assert problem is not None and field in problem


def test_orchestration_schema_is_a_valid_schema() -> None:
    from jsonschema import Draft202012Validator

    from lorch.wire.resources import schema_path

    Draft202012Validator.check_schema(json.loads(schema_path("orchestration").read_text()))
