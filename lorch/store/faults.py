"""Test hooks as one injected object: crash points, planted bugs, and the agents they kill.

Nothing below the entry point reads the environment for these. ``lorch run`` and
``lorch resume`` (``lorch/app/runner.py``) build one :class:`Faults` with
:meth:`Faults.from_env` and pass it down to the ledger and the engine; any other
user of those gets :data:`NO_FAULTS`, which does nothing. The variables stay the
interface for child processes (the crash harness sets them for each lorch it
starts):

- ``LORCH_CRASH_AT=MODE:K``: a crash point of the ledger writer
  (``lorch/store/failpoint.py``);
- ``LORCH_PLANT_BUG=name[,name…]``: deliberate bugs, so that tests can show the
  crash harness catches each class of mistake (docs/decisions.md D7). Nothing in
  ``lorch.json`` can switch them on.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from lorch.store import failpoint
from lorch.store.failpoint import Failpoint

PLANT_ENV = "LORCH_PLANT_BUG"
BUGS = frozenset(
    {
        "new_key_on_resend",
        "skip_command_fsync",
        "receipt_before_ledger",
        "no_torn_cut",
        "no_orphan_kill",
        # Caught only by crash states derived from the system calls (powercut):
        "ledger_fsync_skipped",  # the ledger's fsync left out, its "synced" count kept
        "reask_on_resume",
    }
)


class AgentGroups:
    """The process groups of this lorch's agents by role, and the role at work.

    What the ``agent`` and ``powerloss`` crash points kill. The engine's roster
    is its only writer; without such a crash point it keeps nothing.
    """

    def __init__(self, *, tracking: bool = False) -> None:
        self.tracking = tracking
        self._groups: dict[str, int] = {}
        self._busy: str | None = None

    def started(self, role: str, pgid: int) -> None:
        if self.tracking:
            self._groups[role] = pgid

    def forgot(self, role: str, pgid: int) -> None:
        if self._groups.get(role) == pgid:
            del self._groups[role]

    @contextlib.contextmanager
    def working(self, role: str) -> Iterator[None]:
        """While ``role``'s agent works on a command."""
        self._busy = role if self.tracking else None
        try:
            yield
        finally:
            self._busy = None

    def busy(self) -> list[int]:
        """The group of the agent at work, if any."""
        pgid = self._groups.get(self._busy) if self._busy is not None else None
        return [pgid] if pgid else []

    def all(self) -> list[int]:
        return list(self._groups.values())


@dataclass(frozen=True)
class Faults:
    """The crash point and the planted bugs of this process; none by default."""

    crash: Failpoint | None = None
    planted: frozenset[str] = frozenset()
    agents: AgentGroups = field(default_factory=AgentGroups)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Faults:
        """The faults the environment asks for; a bad ``LORCH_CRASH_AT`` is a UsageError."""
        spec = environ.get(failpoint.ENV)
        crash = failpoint.parse(spec) if spec else None
        planted = frozenset(b for b in environ.get(PLANT_ENV, "").split(",") if b)
        tracking = crash is not None and crash.mode in ("agent", "powerloss")
        return cls(crash, planted, AgentGroups(tracking=tracking))

    def planted_bug(self, name: str) -> bool:
        assert name in BUGS, name
        return name in self.planted

    def after_durable(self, n: int) -> None:
        """Record ``n`` is durable: act if the crash point is there."""
        fp = self.crash
        if fp is None or n != fp.k:
            return
        if fp.mode == "after":
            failpoint.kill_self()
        elif fp.mode == "agent":
            for pgid in self.agents.busy():
                failpoint.kill_group(pgid)
        elif fp.mode == "powerloss":
            for pgid in self.agents.all():
                failpoint.kill_group(pgid)
            failpoint.kill_self()


NO_FAULTS = Faults()
