"""mockagent as the orchestration role: fixtures in the original format, sequences, defaults."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lorch.core import intake
from lorch.wire import protocol
from tests.mockagent.driver import Agent, command

pytestmark = pytest.mark.e2e

FOUND = {
    "strategy": "lorch-heuristic/1",
    "search_paths": [".", "docs", "specs", "plans"],
    "candidates": [
        {"path": "PLAN.md", "score": 55, "headings": ["Plan"]},
        {"path": "docs/notes.md", "score": 8, "headings": []},
    ],
}


def intake_cmd(action: str = "intake", **extra: Any) -> dict[str, Any]:
    inputs = {"user_instruction": "Manage PLAN.md", "discovery_metadata": FOUND, **extra}
    return command(action, task="intake", inputs=inputs, role="orchestration", corr="corr-intake")


def orchestrator(mockagent_bin: str, ws: Path, body: dict[str, Any] | None = None) -> Agent:
    args = ["--type", "orchestration"]
    if body is not None:
        (ws / "orch.json").write_text(json.dumps(body))
        args += ["--script", str(ws / "orch.json")]
    return Agent(mockagent_bin, ws, *args)


def answer(a: Agent, cmd: dict[str, Any]) -> dict[str, Any]:
    a.send(cmd)
    ev = a.events()[-1]
    assert ev["correlation_id"] == "corr-intake" and ev["task_id"] == "intake"
    return ev


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    d = tmp_path / "ws"
    d.mkdir()
    return d


def test_original_format_intake_and_task_discovery(mockagent_bin: str, ws: Path) -> None:
    # The original project's shape: responses.<action>.events[] with "type" and "payload".
    body = {
        "responses": {
            "intake": {
                "events": [
                    {
                        "type": "orchestration.proposed_tasks",
                        "payload": {
                            "plan_candidates": [{"path": "PLAN.md", "confidence": 0.8}],
                            "derived_tasks": [{"id": "T-7", "title": "Seven", "files": ["a"]}],
                        },
                    }
                ]
            },
            "task_discovery": {
                "events": [
                    {
                        "type": "orchestration.proposed_tasks",
                        "payload": {
                            "plan_candidates": [{"path": "docs/notes.md", "confidence": 0.5}],
                            "derived_tasks": [{"id": "T-8", "title": "Eight"}],
                            "notes": "more",
                        },
                    }
                ]
            },
        }
    }
    a = orchestrator(mockagent_bin, ws, body)
    first = answer(a, intake_cmd())
    more = answer(a, intake_cmd("task_discovery", context={"round": 1}))
    assert a.close() == 0
    for line in a.lines:
        protocol.decode(line)
    assert first["event"] == more["event"] == "orchestration.proposed_tasks"
    assert first["payload"]["derived_tasks"][0]["id"] == "T-7"
    assert more["payload"]["derived_tasks"][0]["id"] == "T-8"
    assert intake.answer_problem(first) is None and intake.answer_problem(more) is None
    # The orchestration role only reads: nothing but its own state was written.
    written = [p for p in ws.rglob("*") if p.is_file() and ".mockagent" not in p.parts]
    assert written == [ws / "orch.json"]


def test_sequence_asks_for_clarification_first_then_proposes(mockagent_bin: str, ws: Path) -> None:
    body = {
        "responses": {
            "intake": {
                "sequence": [
                    {
                        "events": [
                            {
                                "type": "orchestration.needs_clarification",
                                "payload": {"questions": ["Which module?"]},
                            }
                        ]
                    },
                    {
                        "events": [
                            {
                                "type": "orchestration.proposed_tasks",
                                "payload": {
                                    "plan_candidates": [{"path": "PLAN.md", "confidence": 1}],
                                    "derived_tasks": [{"id": "T-1", "title": "One"}],
                                },
                            }
                        ]
                    },
                ]
            }
        }
    }
    a = orchestrator(mockagent_bin, ws, body)
    first = intake_cmd()
    assert answer(a, first)["event"] == "orchestration.needs_clarification"
    clarified = intake_cmd(clarifications=[{"question": "Which module?", "answer": "greet"}])
    assert answer(a, clarified)["event"] == "orchestration.proposed_tasks"
    # The first key again (a resend after a crash) still gets its own answer.
    assert answer(a, {**first, "message_id": "cmd-again"})["event"] == (
        "orchestration.needs_clarification"
    )
    assert a.close() == 0


def test_retriable_error_is_not_cached(mockagent_bin: str, ws: Path) -> None:
    body = {
        "responses": {
            "intake": {
                "events": [
                    {
                        "type": "error",
                        "payload": {"code": "temporary_failure", "retriable": True},
                    }
                ]
            }
        }
    }
    a = orchestrator(mockagent_bin, ws, body)
    ev = answer(a, intake_cmd())
    assert ev["event"] == "error" and ev["payload"]["retriable"] is True
    assert a.close() == 0


def test_default_proposes_the_discovered_plans(mockagent_bin: str, ws: Path) -> None:
    a = orchestrator(mockagent_bin, ws)
    ev = answer(a, intake_cmd())
    chosen = answer(a, intake_cmd(plan="docs/notes.md"))
    empty = command(
        "intake",
        task="intake",
        inputs={"user_instruction": "x", "discovery_metadata": {"candidates": []}},
        role="orchestration",
        corr="corr-intake",
    )
    none = answer(a, empty)
    assert a.close() == 0
    assert intake.answer_problem(ev) is None
    assert [c["path"] for c in ev["payload"]["plan_candidates"]] == ["PLAN.md", "docs/notes.md"]
    assert ev["payload"]["derived_tasks"] == [
        {"id": "T-0001", "title": "Implement PLAN.md", "files": []}
    ]
    assert chosen["payload"]["plan_candidates"] == [{"path": "docs/notes.md", "confidence": 1.0}]
    assert none["event"] == "error" and none["payload"]["retriable"] is False
