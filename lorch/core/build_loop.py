"""The build loop of one task, as pure functions of the folded state (MASTER-SPEC §4.2).

    implement → review ─ changes_requested → implement_changes → review …
                       └ approved → update_spec ─ spec.changes_requested → implement_changes …
                                                └ spec.updated | spec.no_changes_needed → done

Given the last accepted answer of the task, :func:`next_build` says which
command comes next (with its round, capped by ``policy.max_rounds``) or how the
task ends. Part of the reducer (``lorch/core/workflow.py``): no I/O, no clock.
"""

from __future__ import annotations

import json
from typing import Any

from lorch.core.commands import Fresh, answer_digest, build_command
from lorch.core.state import State
from lorch.core.steps import Finish, Send, Step
from lorch.wire.protocol import Record


def new_command(
    state: State,
    action: str,
    inputs: dict[str, Any],
    *,
    fresh: Fresh,
    expected: list[dict[str, Any]] | None = None,
    correlation_id: str | None = None,
) -> Record:
    return build_command(
        action,
        inputs,
        task_id=state.task_id,
        snapshot_id=state.snapshot_id or "",  # next_step asks for a snapshot first
        number=state.commands + 1,
        max_attempts=state.policy.max_attempts,
        fresh=fresh,
        expected=expected,
        correlation_id=correlation_id,
    )


def answer_problem(event: Record) -> str | None:
    """Why an agent's answer lacks what :func:`next_build` acts on; None if it has it.

    A ``builder.completed`` needs ``payload.tests.status`` (pass or fail). The
    schema does not say so, so the engine asks this where the answer arrives:
    an answer without it is a protocol error of its attempt (retried under the
    run's limits), never a fact the reducer has to end the run on.
    """
    if event.get("event") == "builder.completed":
        payload = event.get("payload")
        tests = payload.get("tests") if isinstance(payload, dict) else None
        status = tests.get("status") if isinstance(tests, dict) else None
        if status not in ("pass", "fail"):
            return f"builder.completed without payload.tests.status pass or fail (found {status!r})"
    return None


def next_build(state: State, fresh: Fresh) -> Step:
    answer = state.last_answer
    if not state.task_id or state.snapshot_id is None:
        return Finish("failed", "the ledger records no task or no snapshot of the workspace")
    if answer is None:
        outputs = state.task.get("expected_outputs")
        paths = [p for p in outputs if isinstance(p, str)] if isinstance(outputs, list) else []
        expected = [{"path": p, "required": True} for p in paths]
        return Send(
            new_command(
                state, "implement", {"round": 1, "task": state.task}, fresh=fresh, expected=expected
            )
        )
    name = answer.get("event")
    if name == "builder.completed":
        return _after_builder(state, answer, fresh)
    if name == "review.completed":
        return _after_review(state, answer, fresh)
    if name == "spec.changes_requested":
        return _changes(state, answer, fresh, "spec", answer.get("payload") or {}, "notes_path")
    if name in ("spec.updated", "spec.no_changes_needed"):
        return Finish("completed", "")
    task = state.task_id
    return Finish("failed", f"task {task}: unexpected answer {name!r} to {state.last_action}")


def _after_builder(state: State, answer: Record, fresh: Fresh) -> Step:
    task, max_rounds = state.task_id, state.policy.max_rounds
    tests = (answer.get("payload") or {}).get("tests")
    if not isinstance(tests, dict) or tests.get("status") not in ("pass", "fail"):
        return Finish("failed", f"task {task}: builder.completed carries no payload.tests status")
    # MASTER-SPEC §14.2: tests.status == "pass" or tests.allowed_failures; the
    # policy can also allow failures for every task.
    allowed = tests.get("allowed_failures") is True or state.policy.allowed_failures
    if tests["status"] == "fail" and not allowed:
        return Finish("failed", f"task {task}: builder tests failed: {tests.get('summary', '')}")
    review_round = state.rounds.get("review", 0) + 1
    if review_round > max_rounds:
        return Finish("failed", f"task {task}: review round cap of {max_rounds} reached")
    inputs = {"round": review_round, "answers": answer_digest(answer)}
    return Send(new_command(state, "review", inputs, fresh=fresh))


def review_status(state: State, answer: Record) -> Any:
    """The review's verdict: from the bytes lorch captured at the end of the reviewer's turn.

    When the answer names its verdict file (``payload.review_path``, as every ACP
    answer does) and lorch captured that file holding a verdict, the captured
    status is the verdict; whatever the file says later counts for nothing.
    Otherwise the event's own status is.
    """
    p = state.last_accepted
    return verdict_status(answer, p.verdict if p is not None and p.terminal is answer else None)


def verdict_status(answer: Record, captured: Record | None) -> Any:
    """A review answer's status, given the ``system.verdict`` capture of its turn (if any).

    The answer and the captured file must agree: when they do not (another
    process changed the file as the turn ended), the review approves nothing
    and asks for changes, the one answer no one gains by forging.
    """
    payload = answer.get("payload")
    named = payload.get("review_path") if isinstance(payload, dict) else None
    if captured is not None and named == captured.get("path"):
        text = captured.get("text")
        try:
            found = json.loads(text) if isinstance(text, str) else None
        except (ValueError, RecursionError):
            found = None
        if isinstance(found, dict) and found.get("status") in ("approved", "changes_requested"):
            said = answer.get("status")
            return found["status"] if said in (None, found["status"]) else "changes_requested"
    return answer.get("status")


def _after_review(state: State, answer: Record, fresh: Fresh) -> Step:
    task, max_rounds = state.task_id, state.policy.max_rounds
    status = review_status(state, answer)
    if status == "approved":
        spec_round = state.rounds.get("update_spec", 0) + 1
        if spec_round > max_rounds:
            return Finish("failed", f"task {task}: spec round cap of {max_rounds} reached")
        inputs = {"round": spec_round, "answers": answer_digest(answer)}
        return Send(new_command(state, "update_spec", inputs, fresh=fresh))
    if status == "changes_requested":
        return _changes(state, answer, fresh, "review", answer.get("payload") or {}, "review_path")
    return Finish("failed", f"task {task}: review.completed with unknown status {status!r}")


def _changes(
    state: State, answer: Record, fresh: Fresh, reason: str, payload: Record, notes: str
) -> Step:
    """implement_changes, answering the review or spec notes at ``payload[notes]``."""
    builder_round = state.rounds.get("implement", 0) + state.rounds.get("implement_changes", 0) + 1
    inputs = {
        "round": builder_round,
        "reason": reason,
        "answers": answer_digest(answer),
        "notes_path": payload.get(notes),
    }
    return Send(new_command(state, "implement_changes", inputs, fresh=fresh))
