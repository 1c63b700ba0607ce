"""The engine's side of intake: carry out the steps the reducer asks for.

The reducer (``lorch.core.workflow`` / ``lorch.core.intake``) decides *what* comes next
from the ledger alone; this module does it and writes the record that says it
was done — discovery results, the user's answers, the start of each approved
task. Each record is appended and fsynced before anything acts on it
(DESIGN.md §5.1, §5.13): an answer is durable before the command it leads to is
built, so a crash between the two never asks the question again.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from lorch.core.intake import CORRELATION, INTAKE_TASK, Ask, Discover
from lorch.core.state import State
from lorch.core.steps import StartTask
from lorch.engine.asking import Prompter, decide
from lorch.engine.discovery import discover
from lorch.wire import protocol
from lorch.wire.protocol import Record

IntakeStep = Discover | Ask | StartTask


class Host(Protocol):
    """What the engine's recorder offers: its workspace, state, and the write-ahead append."""

    workspace: Path
    state: State

    def append(self, record: Record) -> None: ...

    def sync(self) -> None: ...


def system_record(name: str, payload: Record, task_id: str, status: str | None = None) -> Record:
    record: Record = {
        "kind": "event",
        "message_id": protocol.new_message_id("evt"),
        "correlation_id": CORRELATION,
        "task_id": task_id,
        "from": {"agent_type": "system"},
        "event": name,
        "payload": payload,
        "occurred_at": protocol.now_rfc3339(),
    }
    if status is not None:
        record["status"] = status
    return record


def perform(host: Host, step: IntakeStep, prompter: Prompter, idle: Callable[[int], None]) -> None:
    """Do ``step`` and record it; ``idle(fd)`` waits for ``fd`` while agents' output is read."""
    if isinstance(step, Discover):
        metadata = discover(host.workspace)
        host.append(system_record("system.discovery", {"metadata": dict(metadata)}, INTAKE_TASK))
    elif isinstance(step, Ask):
        # Everything before the question is on disk and on screen before lorch waits.
        host.sync()
        decision = decide(prompter, step.question, idle=idle)
        host.append(
            system_record(
                "system.user_decision", decision.payload, INTAKE_TASK, status=decision.status
            )
        )
    else:
        task = step.task
        host.append(
            system_record(
                "system.task_started",
                {"task": task, "index": step.index, "of": step.of},
                str(task["id"]),
            )
        )
