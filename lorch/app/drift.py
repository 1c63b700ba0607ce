"""What changed in ``lorch.json`` since a run started (resume decides from the ledger).

A run records, in its ``system.run_started``, its task, its :class:`RunPolicy`
and a digest of every key of the configuration it started from, by dotted
path (``agents.reviewer.cmd``, ``policy.max_rounds``; never the values: an
agent's environment may hold secrets). Resume refuses *any* change — another
command for a role, another environment, other limits — unless the user
accepts it explicitly (``lorch resume --accept-config-change``): an agent that
rewrote ``lorch.json`` and killed lorch must not get a new reviewer run. The
refusal names every changed key. An accepted change is recorded in
``system.resumed`` (the keys, the new digests, and the task or policy it
brings), so that every later decision, and the next resume's comparison,
still comes from the ledger.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lorch.app.config import Config, run_policy
from lorch.core import policy as policies
from lorch.core.policy import RunPolicy
from lorch.wire.canonical import digest
from lorch.wire.protocol import Record


def parts(config: Config) -> dict[str, str]:
    """A digest per key of the configuration, by dotted path (a list is one key)."""
    out: dict[str, str] = {}
    _flatten(config.raw, "", out)
    return out


def _flatten(value: Any, prefix: str, out: dict[str, str]) -> None:
    if isinstance(value, dict) and value:
        for key, item in value.items():
            _flatten(item, f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix or "$"] = digest(value)


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

    def accepted(self, config: Config) -> Record:
        """What ``system.resumed`` records when the user accepts the change."""
        out: Record = {"config_changed": self.changed, **identity(config)}
        if self.policy is not None:
            out["policy"] = self.policy.as_record()
        if self.task is not None:
            out["task"] = self.task
        return out


def compare(started: Mapping[str, Any], recorded: RunPolicy, task: Record, config: Config) -> Drift:
    """Compare the run's record of its configuration with ``config`` now.

    ``started``: ``config_digest`` and ``config_parts`` as the ledger last
    recorded them (``system.run_started``, or the last accepted change).
    """
    drift = Drift()
    if started.get("config_digest") == config.digest:
        return drift
    before = started.get("config_parts")
    now = parts(config)
    if isinstance(before, dict):
        drift.changed = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    else:
        drift.changed = ["$ (the run recorded no digest of its keys)"]
    wanted = run_policy(config)
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
