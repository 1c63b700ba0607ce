"""The workflow as a pure reducer over ledger records (DESIGN.md §5.3).

``State.fold(record)`` (``lorch/core/state.py``) folds one ledger record into a
small state, and ``next_step(state)`` says what to do next. ``run`` and ``resume`` share both:
resume replays the ledger through ``fold`` and asks ``next_step``, so it can
only ever send what the ledger implies. The state stays small however long the
run: it keeps counters, the pending command and the last accepted answer, not
the history.

Intake comes first when the run has no task (``lorch/core/intake.py``); each task
then runs the build loop, implement → review → spec (MASTER-SPEC §4.2), whose
next command ``lorch/core/build_loop.py`` decides. The steps ``next_step`` answers
are in ``lorch/core/steps.py``.
"""

from __future__ import annotations

from collections.abc import Iterable

from lorch.core import intake as intake_stage
from lorch.core.build_loop import new_command, next_build
from lorch.core.commands import Fresh, resend
from lorch.core.state import State
from lorch.core.steps import Check, Finish, Restart, Send, StartTask, Step
from lorch.wire.protocol import Record


def replay(records: Iterable[Record]) -> State:
    """The state a ledger's records fold to (what ``run``, ``resume`` and ``verify`` see)."""
    state = State()
    for record in records:
        state.fold(record)
    return state


def after_failure(state: State, role: str, reason: str) -> Restart | Finish:
    """An agent failed: restart it, or fail the run once its restarts are used up.

    When the command's last attempt has just failed, no agent is restarted for
    an attempt that will not come: the run fails on its attempts.
    """
    exhausted = attempts_exhausted(state)
    if exhausted is not None:
        return exhausted
    n = state.restarts.get(role, 0)
    limit = state.policy.max_restarts
    if n >= limit:
        restarts = "1 restart" if limit == 1 else f"{limit} restarts"
        return Finish("failed", f"agent {role} failed after {restarts}: {reason}")
    return Restart(role, n + 1)


def attempts_exhausted(state: State) -> Finish | None:
    """The run's end when the pending command has failed its last attempt, else None."""
    p = state.pending
    if p is not None and p.failed is not None and not p.retriable:
        return Finish(
            "failed",
            f"agent {p.role} failed {p.command['action']} for task {state.task_id} "
            f"(not retriable): {p.failed_code}: {p.failed}",
        )
    if p is None or p.failed is None or p.attempt + 1 < state.policy.max_attempts:
        return None
    return Finish(
        "failed",
        f"agent {p.role} failed {p.command['action']} for task {state.task_id} "
        f"after {p.attempt + 1} attempts: {p.failed_code}: {p.failed}",
    )


def next_step(state: State, *, fresh: Fresh) -> Step:
    """What to do next, given only the folded ledger (plus fresh ids and times)."""
    if state.finished:
        return Finish(state.status, state.failure or "")
    p = state.pending
    if p is not None:
        if p.failed is not None:
            exhausted = attempts_exhausted(state)
            if exhausted is not None:
                return exhausted
            return Send(resend(p.command, fresh, p.attempt + 1), resend=True)
        if p.terminal is not None:
            return Check(p)
        # Sent but never answered (lorch or the agent died): send it again, same key.
        return Send(resend(p.command, fresh, p.attempt), resend=True)
    return _next_new(state, fresh)


def _next_new(state: State, fresh: Fresh) -> Step:
    if state.intake.active and state.queue is None:
        return _next_intake(state, fresh)
    if state.queue is not None and state.task_index < 0:
        return _start(state, 0)
    step = next_build(state, fresh)
    if (
        isinstance(step, Finish)
        and step.status == "completed"
        and state.queue is not None
        and state.task_index + 1 < len(state.queue)
    ):
        return _start(state, state.task_index + 1)
    return step


def _start(state: State, index: int) -> Step:
    queue = state.queue or []
    if not queue:
        return Finish("completed", "")
    return StartTask(queue[index], index, len(queue))


def _next_intake(state: State, fresh: Fresh) -> Step:
    step = intake_stage.next_intake(state.intake)
    if isinstance(step, intake_stage.Orchestrate):
        return Send(
            new_command(
                state,
                step.action,
                step.inputs,
                fresh=fresh,
                correlation_id=intake_stage.CORRELATION,
            )
        )
    if isinstance(step, intake_stage.Ended):
        return Finish(step.status, step.reason)
    if isinstance(step, intake_stage.Approved):
        return _start(state, 0)  # not reached: the decision sets the queue
    return step
