"""What the workflow reducer answers: the next step of a run (``workflow.next_step``).

The engine carries each one out: :class:`Send` a command, :class:`Check` an
answer, :class:`StartTask` (a task of a multi-task run), or :class:`Finish` the
run; intake adds :class:`~lorch.core.intake.Ask` and :class:`~lorch.core.intake.Discover`.
After a failure ``workflow.after_failure`` answers :class:`Restart` or
:class:`Finish`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lorch.core.intake import Ask, Discover
from lorch.core.state import Pending
from lorch.wire.protocol import Record


@dataclass(frozen=True)
class Send:
    """Append ``command`` to the ledger, then send it. ``resend`` keeps its key."""

    command: Record
    resend: bool = False


@dataclass(frozen=True)
class Check:
    """A terminal answer arrived: check its artifacts, then accept or reject it."""

    pending: Pending


@dataclass(frozen=True)
class Finish:
    status: str  # completed | failed | aborted
    reason: str


@dataclass(frozen=True)
class StartTask:
    """Record ``system.task_started``: the build loop begins for ``task``."""

    task: dict[str, Any]
    index: int
    of: int


@dataclass(frozen=True)
class Restart:
    """Start the role's agent again: its ``n``-th restart (1-based), after a backoff."""

    role: str
    n: int


Step = Send | Check | Finish | StartTask | Ask | Discover
