"""The transports by name: what ``$.agents.ROLE.transport`` may say, and what each can do.

The one place besides the configuration parser that reads a transport's name:
everything above the agents layer asks a transport's :class:`Capabilities`
(``registry.capabilities(name)``) instead of comparing names. Adding a
transport is one more entry here, its class (which carries the same
capabilities), and its name in ``schemas/v1/config.schema.json``.

Nothing heavy is imported here (the ACP SDK is slow to import).
"""

from __future__ import annotations

from lorch.agents.transport import Capabilities

NDJSON = Capabilities(
    name="ndjson",
    heartbeats=True,
    checkpointed_turns=False,
    runs_tests=False,
    start_timeout_s=None,
    check="start",
)
# An ACP agent may take a while to answer `initialize` (an adapter starting its CLI).
ACP = Capabilities(
    name="acp",
    heartbeats=False,
    checkpointed_turns=True,
    runs_tests=True,
    start_timeout_s=60.0,
    check="acp",
    options=("fs", "test_timeout_s", "max_updates_per_turn", "permissions", "prompts"),
)

TRANSPORTS: dict[str, Capabilities] = {c.name: c for c in (NDJSON, ACP)}
DEFAULT = NDJSON


def names() -> list[str]:
    """Every transport's name, the default first."""
    return list(TRANSPORTS)


def in_schema(kind: Capabilities) -> bool:
    """Whether this lorch's configuration schema lets a role name the transport ``kind``."""
    from lorch.wire import schemas

    role = schemas.load_schema("config").get("$defs", {}).get("role", {})
    return kind.name in role.get("properties", {}).get("transport", {}).get("enum", [])


def capabilities(name: str) -> Capabilities:
    """The capabilities of the transport ``name``; KeyError when there is none
    (the configuration's schema lets only known names through)."""
    return TRANSPORTS[name]
