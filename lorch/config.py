"""``lorch.json``: loading, validation, defaults, and auto-creation.

In a directory with no ``lorch.json``, the bundled ``happy-path`` scenario is
copied in, wiring the three roles to the built-in ``mockagent``, so that
``lorch run`` works on a fresh machine with nothing else installed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorch import prompts, schemas
from lorch.canonical import digest
from lorch.errors import ConfigError, SchemaError

FILENAME = "lorch.json"
DEFAULT_SCENARIO = "happy-path"
DEFAULT_TIMEOUTS = {
    "implement": 600.0,
    "implement_changes": 600.0,
    "review": 300.0,
    "update_spec": 180.0,
    "intake": 180.0,
    "task_discovery": 180.0,
}


@dataclass(frozen=True)
class AgentConfig:
    role: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    heartbeat_interval_s: float = 10.0
    timeouts_s: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    # "ndjson" (lorch's own protocol) or "acp" (the Agent Client Protocol).
    transport: str = "ndjson"
    # acp only: names copied from lorch's environment (nothing else of it is passed),
    # the answer to session/request_permission per tool kind, prompt templates per action.
    pass_env: tuple[str, ...] = ()
    permissions: dict[str, str] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Policy:
    max_rounds: int = 10
    max_attempts: int = 3
    max_restarts: int = 5
    heartbeat_interval_s: float = 10.0
    heartbeat_misses: int = 3
    backoff_initial_s: float = 1.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 60.0
    allowed_failures: bool = False
    fsync: bool = True

    def as_record(self) -> dict[str, Any]:
        """What the reducer needs, recorded in ``system.run_started``."""
        return {
            "max_rounds": self.max_rounds,
            "max_attempts": self.max_attempts,
            "max_restarts": self.max_restarts,
            "allowed_failures": self.allowed_failures,
        }


@dataclass(frozen=True)
class Config:
    path: Path
    raw: dict[str, Any]
    task: dict[str, Any] | None
    agents: dict[str, AgentConfig]
    policy: Policy

    @property
    def digest(self) -> str:
        return digest(self.raw)


def parse(raw: Any, path: Path) -> Config:
    try:
        schemas.validate("config", raw, source=str(path))
    except SchemaError as e:
        raise ConfigError(str(e)) from None
    pol = raw.get("policy", {})
    backoff = pol.get("backoff", {})
    hb = float(pol.get("heartbeat_interval_s", 10.0))
    policy = Policy(
        max_rounds=pol.get("max_rounds", 10),
        max_attempts=pol.get("max_attempts", 3),
        max_restarts=pol.get("max_restarts", 5),
        heartbeat_interval_s=hb,
        heartbeat_misses=pol.get("heartbeat_misses", 3),
        backoff_initial_s=float(backoff.get("initial_s", 1.0)),
        backoff_factor=float(backoff.get("factor", 2.0)),
        backoff_max_s=float(backoff.get("max_s", 60.0)),
        allowed_failures=pol.get("allowed_failures", False),
        fsync=pol.get("fsync", True),
    )
    policy_timeouts = {
        **DEFAULT_TIMEOUTS,
        **{k: float(v) for k, v in pol.get("timeouts_s", {}).items()},
    }
    agents = {}
    for role, spec in raw["agents"].items():
        agents[role] = AgentConfig(
            role=role,
            cmd=list(spec["cmd"]),
            env=dict(spec.get("env", {})),
            cwd=spec.get("cwd"),
            heartbeat_interval_s=float(spec.get("heartbeat_interval_s", hb)),
            timeouts_s={
                **policy_timeouts,
                **{k: float(v) for k, v in spec.get("timeouts_s", {}).items()},
            },
            transport=spec.get("transport", "ndjson"),
            pass_env=tuple(spec.get("pass_env", ())),
            permissions=dict(spec.get("permissions", {})),
            prompts=dict(spec.get("prompts", {})),
        )
        for action, template in spec.get("prompts", {}).items():
            prompts.check(template, f"{path}: $.agents.{role}.prompts.{action}")
    return Config(path=path, raw=raw, task=raw.get("task"), agents=agents, policy=policy)


def load(workspace: Path) -> Config:
    path = workspace / FILENAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no configuration file (run `lorch run` to create one)"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    return parse(raw, path)


def ensure(workspace: Path) -> tuple[Config, bool]:
    """Load lorch.json, creating it from the default scenario when there is none."""
    created = False
    if not (workspace / FILENAME).exists():
        from lorch.scenarios import materialize

        materialize(DEFAULT_SCENARIO, workspace)
        created = True
    return load(workspace), created
