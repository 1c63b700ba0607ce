"""Time-dependent decisions on an injectable clock: heartbeats, timeouts, backoff (DESIGN.md §6).

Nothing here reads the wall clock by itself, so the engine's supervision is
tested with a fake clock, without waiting.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Protocol


class Clock(Protocol):
    def __call__(self) -> float: ...


@dataclass
class Backoff:
    """Exponential backoff with full jitter: uniform(0, min(cap, initial·factor^n))."""

    initial: float = 1.0
    factor: float = 2.0
    cap: float = 60.0
    rng: random.Random = field(default_factory=random.Random)

    def ceiling(self, n: int) -> float:
        return float(min(self.cap, self.initial * self.factor**n))

    def delay(self, n: int) -> float:
        return self.rng.uniform(0.0, self.ceiling(n))


# Seconds an agent may take to send its first heartbeat, however short its
# interval (docs/decisions.md, "a starting agent has a start-up grace").
START_GRACE_S = 10.0


@dataclass
class Watchdog:
    """Heartbeat and timeout bookkeeping for one agent, on an injected clock.

    ``interval=math.inf`` watches no heartbeats (an agent whose protocol has
    none): only the timeout of the command in flight. Until its first heartbeat
    an agent is starting (an interpreter loading, a loaded machine): it has at
    least ``start_grace`` seconds before it counts as unhealthy.
    """

    clock: Clock
    interval: float
    misses: int = 3
    start_grace: float = 0.0
    last_beat: float = 0.0
    deadline: float | None = None
    started: bool = False

    def __post_init__(self) -> None:
        self.last_beat = self.clock()

    def beat(self) -> None:
        self.last_beat = self.clock()
        self.started = True

    def reset(self) -> None:
        """Count silence from now (a command was just sent); a starting agent stays starting."""
        self.last_beat = self.clock()

    @property
    def allowance(self) -> float:
        """Seconds of silence tolerated now."""
        silence = self.interval * self.misses
        return silence if self.started else max(silence, self.start_grace)

    def arm(self, timeout: float) -> None:
        self.deadline = self.clock() + timeout

    def disarm(self) -> None:
        self.deadline = None

    def unhealthy(self) -> bool:
        return self.clock() - self.last_beat > self.allowance

    def timed_out(self) -> bool:
        return self.deadline is not None and self.clock() > self.deadline

    def next_check_in(self) -> float:
        """Seconds until the earliest moment a verdict could change."""
        now = self.clock()
        t = self.last_beat + self.allowance - now
        if self.deadline is not None:
            t = min(t, self.deadline - now)
        return max(0.0, t)
