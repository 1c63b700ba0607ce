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
from lorch.wire.protocol import Record

IntakeStep = Discover | Ask | StartTask


class Host(Protocol):
    """What the engine's recorder offers: its workspace, state, its records and syncs."""

    workspace: Path
    state: State

    def system(
        self,
        name: str,
        payload: Record,
        correlation_id: str | None = None,
        *,
        sync: bool = True,
        task_id: str | None = None,
        status: str | None = None,
    ) -> None: ...

    def sync(self) -> None: ...


def perform(host: Host, step: IntakeStep, prompter: Prompter, idle: Callable[[int], None]) -> None:
    """Do ``step`` and record it; ``idle(fd)`` waits for ``fd`` while agents' output is read."""
    if isinstance(step, Discover):
        metadata = discover(host.workspace)
        host.system(
            "system.discovery", {"metadata": dict(metadata)}, CORRELATION, task_id=INTAKE_TASK
        )
    elif isinstance(step, Ask):
        # Everything before the question is on disk and on screen before lorch waits.
        host.sync()
        decision = decide(prompter, step.question, idle=idle)
        host.system(
            "system.user_decision",
            decision.payload,
            CORRELATION,
            task_id=INTAKE_TASK,
            status=decision.status,
        )
    else:
        task = step.task
        host.system(
            "system.task_started",
            {"task": task, "index": step.index, "of": step.of},
            CORRELATION,
            task_id=str(task["id"]),
        )
