"""The limits a run runs under, frozen when it starts (DESIGN.md §5.3, §6).

:class:`RunPolicy` holds every number that decides how a run goes — rounds,
attempts, restarts, backoff, heartbeats, per-action timeouts. It is made from
``lorch.json`` when a run starts, recorded in its ``system.run_started``, and
from then on read back from that record only: a resumed run keeps the limits
it started with, whatever ``lorch.json`` says by then.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lorch.config import DEFAULT_TIMEOUTS, Config

DEFAULT_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class RolePolicy:
    heartbeat_interval_s: float = 10.0
    timeouts_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))


@dataclass(frozen=True)
class RunPolicy:
    max_rounds: int = 10
    max_attempts: int = 3
    max_restarts: int = 5
    allowed_failures: bool = False
    heartbeat_misses: int = 3
    backoff_initial_s: float = 1.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 60.0
    roles: Mapping[str, RolePolicy] = field(default_factory=dict)

    def timeout(self, role: str, action: str) -> float:
        r = self.roles.get(role)
        return r.timeouts_s.get(action, DEFAULT_TIMEOUT_S) if r else DEFAULT_TIMEOUT_S

    def heartbeat_interval(self, role: str) -> float:
        r = self.roles.get(role)
        return r.heartbeat_interval_s if r else RolePolicy().heartbeat_interval_s

    def as_record(self) -> dict[str, Any]:
        """The ``policy`` payload of ``system.run_started``."""
        return {
            "max_rounds": self.max_rounds,
            "max_attempts": self.max_attempts,
            "max_restarts": self.max_restarts,
            "allowed_failures": self.allowed_failures,
            "heartbeat_misses": self.heartbeat_misses,
            "backoff": {
                "initial_s": self.backoff_initial_s,
                "factor": self.backoff_factor,
                "max_s": self.backoff_max_s,
            },
            "roles": {
                role: {
                    "heartbeat_interval_s": r.heartbeat_interval_s,
                    "timeouts_s": dict(sorted(r.timeouts_s.items())),
                }
                for role, r in sorted(self.roles.items())
            },
        }


def from_config(config: Config) -> RunPolicy:
    p = config.policy
    return RunPolicy(
        max_rounds=p.max_rounds,
        max_attempts=p.max_attempts,
        max_restarts=p.max_restarts,
        allowed_failures=p.allowed_failures,
        heartbeat_misses=p.heartbeat_misses,
        backoff_initial_s=p.backoff_initial_s,
        backoff_factor=p.backoff_factor,
        backoff_max_s=p.backoff_max_s,
        roles={
            role: RolePolicy(a.heartbeat_interval_s, dict(a.timeouts_s))
            for role, a in config.agents.items()
        },
    )
