"""What changed in ``lorch.json`` since a run started (resume decides from the ledger).

A run records, in its ``system.run_started``, its task, its :class:`RunPolicy`
and a digest of each part of the configuration it started from. Resume keeps
the recorded task and policy whatever ``lorch.json`` says now, and says what
changed. A change that would alter the run's keys (its task) or its limits
(the policy: rounds, attempts, restarts, backoff, heartbeats, timeouts) is
*binding*: resume refuses it unless the user accepts it explicitly
(``lorch resume --accept-config-change``), and an accepted change is recorded
in ``system.resumed`` so that every later decision still comes from the ledger.
Other changes (an agent's command line or environment, ``fsync``) apply at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lorch import policy as policies
from lorch.canonical import digest
from lorch.config import Config
from lorch.policy import RunPolicy
from lorch.protocol import Record


def parts(config: Config) -> dict[str, str]:
    """A digest per part of the configuration: each agent, the policy, the task, ..."""
    out = {}
    for key, value in config.raw.items():
        if key == "agents" and isinstance(value, dict):
            out.update({f"agents.{role}": digest(spec) for role, spec in value.items()})
        else:
            out[key] = digest(value)
    return out


def identity(config: Config) -> Record:
    """What ``system.run_started`` records of the configuration (never its values:
    an agent's environment may hold secrets)."""
    return {"config_digest": config.digest, "config_parts": parts(config)}


@dataclass
class Drift:
    changed: list[str] = field(default_factory=list)  # parts of lorch.json that changed
    binding: list[str] = field(default_factory=list)  # what would alter keys or limits
    policy: RunPolicy | None = None  # the policy lorch.json asks for, if it differs
    task: Record | None = None  # the task lorch.json asks for, if it differs

    @property
    def any(self) -> bool:
        return bool(self.changed or self.binding)

    def accepted(self) -> Record:
        """What ``system.resumed`` records when the user accepts the change."""
        out: Record = {"config_changed": self.changed}
        if self.policy is not None:
            out["policy"] = self.policy.as_record()
        if self.task is not None:
            out["task"] = self.task
        return out


def compare(started: Mapping[str, Any], recorded: RunPolicy, task: Record, config: Config) -> Drift:
    """Compare the run's record (``started``: the run_started payload) with ``config`` now."""
    drift = Drift()
    if started.get("config_digest") == config.digest:
        return drift
    before = started.get("config_parts")
    now = parts(config)
    if isinstance(before, dict):
        drift.changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    else:
        drift.changed = ["lorch.json (its parts were not recorded by the lorch that started it)"]
    wanted = policies.from_config(config)
    changes = policies.changes(recorded, wanted)
    if changes:
        drift.policy = wanted
        drift.binding += [f"policy.{c}" for c in changes]
    cfg_task = config.task
    if cfg_task is not None and cfg_task.get("id") == task.get("id") and dict(cfg_task) != task:
        drift.task = dict(cfg_task)
        keys = sorted(k for k in cfg_task.keys() | task.keys() if cfg_task.get(k) != task.get(k))
        drift.binding.append(f"task {task.get('id')}: {', '.join(keys)} (the run's keys)")
    return drift
