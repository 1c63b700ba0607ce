"""The limits a run runs under, frozen when it starts (DESIGN.md §5.3, §6).

:class:`RunPolicy` holds every number that decides how a run goes — rounds,
attempts, restarts, backoff, heartbeats, per-action timeouts. It is made from
``lorch.json`` when a run starts, recorded in its ``system.run_started``, and
from then on read back from that record only: a resumed run keeps the limits
it started with, whatever ``lorch.json`` says by then.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lorch.wire.protocol import Record
from lorch.wire.vocabulary import ARTIFACT_MAX_BYTES, DEFAULT_TIMEOUT_S, DEFAULT_TIMEOUTS, MAX_LINE


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
    backoff_jitter: str = "full"
    message_max_bytes: int = MAX_LINE
    artifact_max_bytes: int = ARTIFACT_MAX_BYTES
    roles: Mapping[str, RolePolicy] = field(default_factory=dict)

    def timeout(self, role: str, action: str) -> float:
        r = self.roles.get(role)
        return r.timeouts_s.get(action, DEFAULT_TIMEOUT_S) if r else DEFAULT_TIMEOUT_S

    def heartbeat_interval(self, role: str) -> float:
        r = self.roles.get(role)
        return r.heartbeat_interval_s if r else RolePolicy().heartbeat_interval_s

    def as_record(self) -> Record:
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
                "jitter": self.backoff_jitter,
            },
            "message_max_bytes": self.message_max_bytes,
            "artifact_max_bytes": self.artifact_max_bytes,
            "roles": {
                role: {
                    "heartbeat_interval_s": r.heartbeat_interval_s,
                    "timeouts_s": dict(sorted(r.timeouts_s.items())),
                }
                for role, r in sorted(self.roles.items())
            },
        }


def from_record(record: Mapping[str, Any], fallback: RunPolicy) -> RunPolicy:
    """The policy recorded in ``system.run_started`` (or accepted at a resume).

    Total, like the fold that calls it: a field missing from the record (a
    ledger written before it was recorded) or not of its type (a damaged one)
    takes its value from ``fallback``.
    """
    f = fallback
    backoff = _obj(record.get("backoff"))
    roles_rec = record.get("roles")
    roles = (
        {
            str(role): RolePolicy(
                _num(_obj(r).get("heartbeat_interval_s"), 10.0),
                {
                    str(k): _num(v, DEFAULT_TIMEOUT_S)
                    for k, v in _obj(_obj(r).get("timeouts_s")).items()
                },
            )
            for role, r in roles_rec.items()
        }
        if isinstance(roles_rec, dict)
        else f.roles
    )
    return RunPolicy(
        max_rounds=_int(record.get("max_rounds"), f.max_rounds),
        max_attempts=_int(record.get("max_attempts"), f.max_attempts),
        max_restarts=_int(record.get("max_restarts"), f.max_restarts, low=0),
        allowed_failures=_bool(record.get("allowed_failures"), f.allowed_failures),
        heartbeat_misses=_int(record.get("heartbeat_misses"), f.heartbeat_misses),
        backoff_initial_s=_num(backoff.get("initial_s"), f.backoff_initial_s, zero=True),
        backoff_factor=_num(backoff.get("factor"), f.backoff_factor),
        backoff_max_s=_num(backoff.get("max_s"), f.backoff_max_s, zero=True),
        backoff_jitter=str(backoff.get("jitter", f.backoff_jitter)),
        message_max_bytes=_int(record.get("message_max_bytes"), f.message_max_bytes),
        artifact_max_bytes=_int(record.get("artifact_max_bytes"), f.artifact_max_bytes),
        roles=roles,
    )


def _obj(v: Any) -> Mapping[str, Any]:
    return v if isinstance(v, dict) else {}


def _int(v: Any, default: int, *, low: int = 1) -> int:
    ok = isinstance(v, int) and not isinstance(v, bool) and low <= v < 2**31
    return v if ok else default


def _num(v: Any, default: float, *, zero: bool = False) -> float:
    """A finite number above 0 (or from 0 with ``zero``), else ``default``."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return default
    return float(v) if (v >= 0 if zero else v > 0) else default


def _bool(v: Any, default: bool) -> bool:
    return v if isinstance(v, bool) else default


def changes(old: RunPolicy, new: RunPolicy) -> list[str]:
    """What differs between two policies, one ``field: old -> new`` per change."""
    a, b = _flat(old.as_record()), _flat(new.as_record())
    return [
        f"{k}: {_show(a.get(k))} -> {_show(b.get(k))}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k)
    ]


def _flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _show(v: Any) -> str:
    return "(none)" if v is None else json.dumps(v)
