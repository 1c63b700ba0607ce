"""``lorch.json``: loading, validation, defaults, and auto-creation.

Two spellings of the same configuration are accepted and may be mixed: lorch's
own (``"version": "1"``, ``policy.backoff`` in seconds, one ``task``) and the
original specification's (MASTER-SPEC §8.2: ``"version": "1.0"``,
``policy.retry`` with the backoff in milliseconds, a ``tasks`` list,
``agents.orchestration.enabled``, and the policy switches lorch always has on).
Every mistake in a file is reported at once, each naming its JSON path; a value
lorch cannot honour (``"concurrency": 2``) is refused with a line that says so
rather than ignored.

In a directory with no ``lorch.json`` (:func:`ensure`), see :mod:`lorch.app.firstrun`.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorch.agents import registry
from lorch.agents.acp import prompts
from lorch.agents.transport import Capabilities
from lorch.core.policy import RolePolicy, RunPolicy
from lorch.wire import schemas
from lorch.wire.canonical import digest
from lorch.wire.errors import ConfigError
from lorch.wire.vocabulary import ARTIFACT_MAX_BYTES, DEFAULT_TIMEOUTS, MAX_LINE, REQUIRED_ROLES

FILENAME = "lorch.json"
DEFAULT_SCENARIO = "happy-path"
# The smallest limit lorch accepts: room for any heartbeat and for every command
# lorch builds (a few KiB) but an implement command carrying a long task, which
# the engine refuses to send with a line naming the setting (docs/decisions.md D35).
MESSAGE_MIN_BYTES = 16_384
JITTERS = ("full",)


@dataclass(frozen=True)
class AgentConfig:
    role: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    heartbeat_interval_s: float = 10.0
    timeouts_s: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    # "ndjson" (lorch's own protocol) or "acp" (the Agent Client Protocol):
    # a name of lorch/agents/registry.py, whose capabilities ``kind`` gives.
    transport: str = registry.DEFAULT.name
    # "agent": the agent answers a re-sent key from its own cache; "lorch": lorch
    # checkpoints the workspace around each command and rolls an interrupted one
    # back before sending it again (DESIGN.md §5.12).
    idempotency: str = "agent"
    # Names copied from lorch's environment (nothing else of it is passed; "*": all
    # of it, D48); acp only: the answer to session/request_permission per tool kind,
    # prompt templates per action.
    pass_env: tuple[str, ...] = ()
    permissions: dict[str, str] = field(default_factory=dict)
    prompts: dict[str, str] = field(default_factory=dict)
    # How the agent's processes are contained: "auto", "bwrap" or "none" (docs/security.md).
    sandbox: str = "auto"
    # acp only: whether lorch offers its file service (fs/*); None or False: not
    # offered, and an agent that asks anyway is refused (docs/real-agents.md).
    fs: bool | None = None
    # acp only: how long the task's test command may run after a builder turn.
    test_timeout_s: float = 600.0
    # acp only: session updates recorded in one turn before the attempt fails.
    max_updates_per_turn: int = 10_000

    @property
    def kind(self) -> Capabilities:
        """What this role's transport can do (lorch/agents/registry.py)."""
        return registry.capabilities(self.transport)

    @property
    def needs_checkpoints(self) -> bool:
        """True when lorch, not the agent, makes this role's effects exactly-once."""
        return self.idempotency == "lorch" or self.kind.checkpointed_turns


@dataclass(frozen=True)
class Policy:
    max_rounds: int = 10
    max_attempts: int = 3
    max_restarts: int = 5
    heartbeat_misses: int = 3
    backoff_initial_s: float = 1.0
    backoff_factor: float = 2.0
    backoff_max_s: float = 60.0
    backoff_jitter: str = "full"
    allowed_failures: bool = False
    fsync: bool = True
    message_max_bytes: int = MAX_LINE
    artifact_max_bytes: int = ARTIFACT_MAX_BYTES


@dataclass(frozen=True)
class Config:
    path: Path
    raw: dict[str, Any]
    # The task `lorch run` runs without --task: `task`, else the first of `tasks`.
    task: dict[str, Any] | None
    # Only the enabled roles: a disabled one is never started.
    agents: dict[str, AgentConfig]
    policy: Policy
    # Every task of the file, `task` first, then `tasks` in order; ids are unique.
    tasks: tuple[dict[str, Any], ...] = ()

    @property
    def digest(self) -> str:
        return digest(self.raw)

    @property
    def orchestration_enabled(self) -> bool:
        """An orchestration role is configured and not switched off (``enabled: false``)."""
        return "orchestration" in self.agents

    def find_task(self, task_id: str) -> dict[str, Any] | None:
        """The task with this id from ``task`` or ``tasks`` (a copy), or None."""
        for t in self.tasks:
            if t["id"] == task_id:
                return dict(t)
        return None


# -- validation -----------------------------------------------------------------


def _get(raw: Any, *keys: str) -> Any:
    for k in keys:
        if not isinstance(raw, dict):
            return None
        raw = raw.get(k)
    return raw


def _suggest(message: str, where: str) -> str:
    """Add "did you mean" to an unexpected key that is close to a known one."""
    m = re.search(r"\('([^']+)' was unexpected\)", message)
    if not m:
        return message
    known = _known_keys(where)
    close = difflib.get_close_matches(m.group(1), known, n=1, cutoff=0.75)
    return f"{message}; did you mean {close[0]!r}?" if close else message


def _known_keys(where: str) -> list[str]:
    """The property names the schema allows at a JSON path like ``$.policy.retry``."""
    schema = schemas.load_schema("config")
    node: Any = schema
    for part in [p for p in where.split(".")[1:] if p]:
        node = _deref(schema, node)
        props = node.get("properties", {}) if isinstance(node, dict) else {}
        if part not in props:
            return []
        node = props[part]
    node = _deref(schema, node)
    return list(node.get("properties", {})) if isinstance(node, dict) else []


def _deref(schema: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = schema["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


Found = list[tuple[str, str]]


def _unsupported(raw: Any, config_dir: Path | None) -> Found:
    """Values the schema allows in the spec's format but lorch cannot honour, and clashes."""
    pol = _get(raw, "policy")
    if not isinstance(pol, dict):
        pol = {}
    return (
        _unsupported_root(raw, config_dir)
        + _unsupported_policy(pol)
        + _unsupported_retry(pol)
        + _unsupported_agents_and_tasks(raw)
    )


def _unsupported_root(raw: Any, config_dir: Path | None) -> Found:
    root = _get(raw, "workspace_root")
    if (
        not isinstance(root, str)
        or config_dir is None
        or (config_dir / root).resolve() == config_dir.resolve()
    ):
        return []
    why = (
        f"{root!r} is not supported: lorch works in the folder that holds lorch.json "
        '(set "." or remove it; pass --workspace DIR to work elsewhere)'
    )
    return [("$.workspace_root", why)]


_FIXED_POLICY: list[tuple[str, Any, str]] = [
    ("concurrency", 1, "lorch runs one agent at a time"),
    ("parallel_reviews", False, "reviews run one at a time"),
    ("strict_version_pinning", True, "every command is pinned to the run's snapshot"),
    ("redact_secrets_in_logs", True, "secrets are always redacted"),
]


def _unsupported_policy(pol: dict[str, Any]) -> Found:
    out: Found = []
    for key, only, why in _FIXED_POLICY:
        value = pol.get(key)
        if key in pol and type(value) is type(only) and value != only:
            shown = json.dumps(value)
            what = f"{shown} is not supported: {why} (set {json.dumps(only)} or remove it)"
            out.append((f"$.policy.{key}", what))
    mmb = pol.get("message_max_bytes")
    if isinstance(mmb, int) and not MESSAGE_MIN_BYTES <= mmb <= MAX_LINE:
        why = (
            f"lines are limited to the protocol's {MAX_LINE} bytes "
            "(larger content travels as files)"
            if mmb > MAX_LINE
            else f"below {MESSAGE_MIN_BYTES} bytes lorch's own commands may not fit"
        )
        what = (
            f"{mmb} is not supported: {why}; set a value from {MESSAGE_MIN_BYTES} "
            f"to {MAX_LINE}, or remove it"
        )
        out.append(("$.policy.message_max_bytes", what))
    return out


def _unsupported_retry(pol: dict[str, Any]) -> Found:
    out: Found = []
    jitter = _get(pol, "retry", "backoff", "jitter")
    if isinstance(jitter, str) and jitter not in JITTERS:
        what = f'{jitter!r} is not supported: lorch\'s backoff has full jitter (set "full")'
        out.append(("$.policy.retry.backoff.jitter", what))
    retry = _get(pol, "retry")
    if not isinstance(retry, dict):
        return out
    if "max_attempts" in retry and "max_attempts" in pol:
        what = "given twice: set policy.max_attempts or policy.retry.max_attempts, not both"
        out.append(("$.policy.retry.max_attempts", what))
    if "backoff" in retry and "backoff" in pol:
        what = (
            "given twice: set policy.backoff (seconds) or policy.retry.backoff "
            "(milliseconds), not both"
        )
        out.append(("$.policy.retry.backoff", what))
    return out


def _unsupported_agents_and_tasks(raw: Any) -> Found:
    out: Found = []
    agents = _get(raw, "agents")
    if isinstance(agents, dict):
        for role in REQUIRED_ROLES:
            if _get(agents, role, "enabled") is False:
                what = (
                    f"false is not supported: every run needs a {role} "
                    "(only orchestration can be disabled)"
                )
                out.append((f"$.agents.{role}.enabled", what))
    seen: set[str] = set()
    listed = [("$.task", _get(raw, "task"))]
    tasks = _get(raw, "tasks")
    if isinstance(tasks, list):
        listed += [(f"$.tasks[{i}]", t) for i, t in enumerate(tasks)]
    for where, t in listed:
        tid = _get(t, "id")
        if isinstance(tid, str):
            if tid in seen:
                out.append((f"{where}.id", f"task {tid!r} is listed twice"))
            seen.add(tid)
    return out


def problems(raw: Any, config_dir: Path | None = None) -> list[tuple[str, str]]:
    """Every mistake in a lorch.json document, as (JSON path, description), in path order.

    Schema violations (all of them, not the first) and the values lorch cannot
    honour. ``config_dir`` is the folder of the file, to check ``workspace_root``.
    """
    found = [(where, _suggest(what, where)) for where, what in schemas.errors("config", raw)]
    if isinstance(raw, dict):
        found += _unsupported(raw, config_dir)
    return sorted(found, key=lambda p: p[0])


def _raise(path: Path, found: list[tuple[str, str]]) -> None:
    if len(found) == 1:
        where, what = found[0]
        raise ConfigError(f"{path}: {where}: {what}")
    lines = "\n".join(f"  {where}: {what}" for where, what in found)
    raise ConfigError(f"{path}: {len(found)} problems:\n{lines}")


def _policy(pol: dict[str, Any]) -> Policy:
    retry = pol.get("retry", {})
    backoff = pol.get("backoff", {})
    ms = retry.get("backoff", {})
    return Policy(
        max_rounds=pol.get("max_rounds", 10),
        max_attempts=pol.get("max_attempts", retry.get("max_attempts", 3)),
        max_restarts=pol.get("max_restarts", 5),
        heartbeat_misses=pol.get("heartbeat_misses", 3),
        backoff_initial_s=float(backoff.get("initial_s", ms.get("initial_ms", 1000) / 1000)),
        backoff_factor=float(backoff.get("factor", ms.get("multiplier", 2.0))),
        backoff_max_s=float(backoff.get("max_s", ms.get("max_ms", 60_000) / 1000)),
        backoff_jitter=str(ms.get("jitter", "full")),
        allowed_failures=pol.get("allowed_failures", False),
        fsync=pol.get("fsync", True),
        message_max_bytes=int(pol.get("message_max_bytes", MAX_LINE)),
        artifact_max_bytes=int(pol.get("artifact_max_bytes", ARTIFACT_MAX_BYTES)),
    )


def _agent(
    role: str, spec: dict[str, Any], hb: float, policy_timeouts: dict[str, float]
) -> AgentConfig:
    transport = spec.get("transport", registry.DEFAULT.name)
    kind = registry.capabilities(transport)
    return AgentConfig(
        role=role,
        cmd=list(spec["cmd"]),
        env=dict(spec.get("env", {})),
        cwd=spec.get("cwd"),
        heartbeat_interval_s=float(spec.get("heartbeat_interval_s", hb)),
        timeouts_s={
            **policy_timeouts,
            **{k: float(v) for k, v in spec.get("timeouts_s", {}).items()},
        },
        transport=transport,
        idempotency=spec.get("idempotency", "lorch" if kind.checkpointed_turns else "agent"),
        pass_env=tuple(spec.get("pass_env", ())),
        permissions=dict(spec.get("permissions", {})),
        prompts=dict(spec.get("prompts", {})),
        sandbox=spec.get("sandbox", "auto"),
        fs=spec.get("fs"),
        test_timeout_s=float(spec.get("test_timeout_s", 600.0)),
        max_updates_per_turn=int(spec.get("max_updates_per_turn", 10_000)),
    )


def parse(raw: Any, path: Path) -> Config:
    """Validate a lorch.json document and build the typed configuration."""
    if not schemas.fast("config")(raw) or _unsupported(raw, path.parent):
        found = problems(raw, path.parent)
        if found:
            _raise(path, found)
    pol = raw.get("policy", {})
    policy = _policy(pol)
    policy_timeouts = {
        **DEFAULT_TIMEOUTS,
        **{k: float(v) for k, v in pol.get("timeouts_s", {}).items()},
    }
    hb = float(pol.get("heartbeat_interval_s", 10.0))
    agents = {}
    for role, spec in raw["agents"].items():
        if spec.get("enabled", True) is False:
            continue
        agents[role] = _agent(role, spec, hb, policy_timeouts)
        for action, template in spec.get("prompts", {}).items():
            prompts.check(template, f"{path}: $.agents.{role}.prompts.{action}")
    tasks = tuple(
        dict(t) for t in ([raw["task"]] if "task" in raw else []) + list(raw.get("tasks", []))
    )
    return Config(
        path=path,
        raw=raw,
        task=dict(tasks[0]) if tasks else None,
        agents=agents,
        policy=policy,
        tasks=tasks,
    )


def read(path: Path) -> Any:
    """The JSON document in ``path``; ConfigError naming the file when it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no configuration file (run `lorch run` to create one)"
        ) from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None


def load(workspace: Path) -> Config:
    path = workspace / FILENAME
    return parse(read(path), path)


def ensure(workspace: Path) -> tuple[Config, bool]:
    """Load lorch.json; in a folder without one, create it (:func:`lorch.app.firstrun.create`).

    Returns the configuration and whether the demo scenario was just materialized.
    In a folder that already holds files, only lorch.json is written and
    :class:`lorch.app.firstrun.ConfigCreated` is raised, so no agent starts on a
    configuration the user has not seen.
    """
    created = False
    if not os.path.lexists(workspace / FILENAME):
        from lorch.app.firstrun import create

        created = create(workspace)
    return load(workspace), created


def run_policy(config: Config) -> RunPolicy:
    """The limits a run started now runs under (recorded in its ``system.run_started``)."""
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
        backoff_jitter=p.backoff_jitter,
        message_max_bytes=p.message_max_bytes,
        artifact_max_bytes=p.artifact_max_bytes,
        roles={
            role: RolePolicy(a.heartbeat_interval_s, dict(a.timeouts_s))
            for role, a in config.agents.items()
        },
    )
