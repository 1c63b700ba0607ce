"""The first run in a folder without ``lorch.json`` (MASTER-SPEC §8.1: auto-creation).

A first run never changes a file it did not create:

- a new or empty folder gets the bundled demo (the ``happy-path`` scenario:
  lorch.json, mock-agent fixtures, a small spec), and the run goes on, so
  ``lorch run --workspace demo`` works on a fresh machine;
- a folder that already holds anything (a project) gets only ``lorch.json``,
  created exclusively, pointing at an ACP agent found on PATH when this lorch
  can drive one, else at ``mockagent --no-files`` (which answers without writing
  into the project). Then lorch stops with :class:`ConfigCreated`, saying what
  it wrote and what to edit: no agent starts on a configuration the user has
  not seen.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lorch.agents import registry
from lorch.agents.known_agents import AGENTS, KnownAgent
from lorch.wire.errors import ConfigError, UsageError

FILENAME = "lorch.json"
DEMO = "happy-path"
ROLES = ("builder", "reviewer", "spec_maintainer")
# Intake's planner (docs/intake.md): mockagent proposes the plan files lorch
# discovers, one task for the first, and writes nothing.
ORCHESTRATION = {"cmd": ["mockagent", "--type", "orchestration", "--no-files"]}


class ConfigCreated(ConfigError):
    """lorch.json was just written in a project folder; the user reviews it first."""


def is_empty(folder: Path) -> bool:
    """A folder that does not exist yet, or holds nothing at all (hidden entries count)."""
    try:
        with os.scandir(folder) as it:
            return next(it, None) is None
    except FileNotFoundError:
        return True


def acp_supported() -> bool:
    """Whether this lorch's configuration schema knows the ACP transport."""
    return registry.in_schema(registry.ACP)


def find_acp_agents(path: str | None = None) -> list[KnownAgent]:
    """The known ACP agents installed on PATH, in order of preference."""
    return [a for a in AGENTS if shutil.which(a.exe, path=path) is not None]


def find_acp_agent(path: str | None = None) -> list[str] | None:
    """The argv of the first known ACP agent installed on PATH, or None."""
    found = find_acp_agents(path)
    return list(found[0].argv) if found else None


def acp_role(agent: KnownAgent) -> dict[str, Any]:
    """A role running ``agent``: its command and the variables docs/real-agents.md gives it."""
    return {"transport": agent.transport, "cmd": list(agent.argv), "pass_env": agent.pass_env}


def default_config(path: str | None = None) -> tuple[dict[str, Any], str]:
    """The configuration written into a project folder, and a phrase naming its agents."""
    found = find_acp_agents(path) if acp_supported() else []
    acp = found[0] if found else None
    agents: dict[str, Any] = {}
    for role in ROLES:
        if acp is not None:
            agents[role] = acp_role(acp)
        else:
            agents[role] = {"cmd": ["mockagent", "--type", role, "--no-files"]}
    agents["orchestration"] = dict(ORCHESTRATION)
    if acp is not None:
        which = (
            f"{acp.name} (`{' '.join(acp.argv)}`, found on PATH), which gets "
            f"{' or '.join(acp.keys)} from lorch's environment ($.agents.ROLE.pass_env)"
        )
        others = [a.exe for a in found[1:] if a.name != acp.name]
        if others:
            which += f"; also found: {', '.join(others)} (docs/real-agents.md: one per role)"
    else:
        which = "mockagent, which answers without writing any file (no ACP agent found on PATH)"
    config = {
        "version": "1.0",
        "workspace_root": ".",
        "agents": agents,
        "policy": {"max_attempts": 3, "max_rounds": 10},
    }
    return config, which


def create(workspace: Path) -> bool:
    """Create what a first run in ``workspace`` needs (see the module docstring).

    Returns True after materializing the demo into a new or empty folder, False
    when another process created lorch.json meanwhile; raises
    :class:`ConfigCreated` after writing only lorch.json into a folder that
    holds files.
    """
    if is_empty(workspace):
        from lorch.app.scenarios import materialize

        materialize(DEMO, workspace)
        return True
    config, which = default_config(os.environ.get("PATH"))
    target = workspace / FILENAME
    data = (json.dumps(config, indent=2) + "\n").encode()
    from lorch.store.atomic import atomic_create_bytes

    try:
        created = atomic_create_bytes(target, data)
    except OSError as e:
        raise ConfigError(f"{target}: cannot create: {e.strerror}") from None
    if not created:
        return False
    raise ConfigCreated(
        f"no lorch.json in {workspace}: wrote {target} and changed nothing else.\n"
        f"  Its agents are {which}.\n"
        f"  Check $.agents (the agent of each role), then run `lorch run --workspace "
        f"{workspace}` again:\n"
        f"  it asks what to do and proposes tasks from the plan files it finds "
        f"(or add $.tasks: id and goal)."
    )


def prepare(workspace: Path) -> str | None:
    """Before ``lorch run`` touches ``workspace``: the first-run step, if it is one.

    Returns the line to print when the demo was just created; None when
    lorch.json was already there. A missing folder is created only when its
    parent exists (a mistyped path deeper down is refused), and only for the demo.
    """
    if os.path.lexists(workspace / FILENAME):
        return None
    existed = workspace.is_dir()
    if not existed:
        if workspace.exists():
            raise UsageError(f"{workspace}: not a folder")
        if not workspace.parent.is_dir():
            raise UsageError(
                f"{workspace}: no such folder, nor its parent {workspace.parent}: check the path "
                "(lorch creates a missing folder only one level deep, for the demo)"
            )
    if not create(workspace):
        return None
    if existed:
        return (
            f"[lorch] {workspace} was empty: created the demo there (lorch.json wired to "
            f"the built-in mock agents, scenario {DEMO})"
        )
    return (
        f"[lorch] {workspace} did not exist: created it with the demo (lorch.json wired to "
        f"the built-in mock agents, scenario {DEMO}); if you meant an existing project, "
        "check --workspace"
    )
