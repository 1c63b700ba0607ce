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

from lorch.core.intake import CORRELATION, INTAKE_TASK, Ask, Discover
from lorch.core.steps import StartTask
from lorch.engine.asking import Prompter, decide
from lorch.engine.discovery import discover
from lorch.engine.recorder import Recorder

IntakeStep = Discover | Ask | StartTask


def perform(
    recorder: Recorder, step: IntakeStep, prompter: Prompter, idle: Callable[[int], None]
) -> None:
    """Do ``step`` and record it; ``idle(fd)`` waits for ``fd`` while agents' output is read."""
    if isinstance(step, Discover):
        metadata = discover(recorder.workspace)
        recorder.system(
            "system.discovery", {"metadata": dict(metadata)}, CORRELATION, task_id=INTAKE_TASK
        )
    elif isinstance(step, Ask):
        # Everything before the question is on disk and on screen before lorch waits.
        recorder.sync()
        decision = decide(prompter, step.question, idle=idle)
        recorder.system(
            "system.user_decision",
            decision.payload,
            CORRELATION,
            task_id=INTAKE_TASK,
            status=decision.status,
        )
    else:
        task = step.task
        recorder.system(
            "system.task_started",
            {"task": task, "index": step.index, "of": step.of},
            CORRELATION,
            task_id=str(task["id"]),
        )
