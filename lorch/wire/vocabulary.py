"""lorch's vocabulary: the names and limits every layer speaks (DESIGN.md §3, §6).

Roles, actions, message kinds, the events that end a command, which role
carries out which action, the default time each action may take, and the size
limits of the protocol. Each is defined here once; the protocol, the reducer,
the configuration and the engine import them.
"""

from __future__ import annotations

KINDS = ("command", "event", "heartbeat", "log")
ROLES = ("builder", "reviewer", "spec_maintainer", "orchestration")
# The roles every lorch.json must name (orchestration is needed only for intake).
REQUIRED_ROLES = ("builder", "reviewer", "spec_maintainer")
ACTIONS = ("implement", "implement_changes", "review", "update_spec", "intake", "task_discovery")
ROLE_OF = {
    "implement": "builder",
    "implement_changes": "builder",
    "review": "reviewer",
    "update_spec": "spec_maintainer",
    "intake": "orchestration",
    "task_discovery": "orchestration",
}
TERMINAL_EVENTS = frozenset(
    {
        "builder.completed",
        "review.completed",
        "spec.updated",
        "spec.no_changes_needed",
        "spec.changes_requested",
        "orchestration.proposed_tasks",
        "orchestration.needs_clarification",
        "orchestration.plan_conflict",
        "error",
    }
)
# Seconds a command of each action may run before lorch times it out.
DEFAULT_TIMEOUTS = {
    "implement": 600.0,
    "implement_changes": 600.0,
    "review": 300.0,
    "update_spec": 180.0,
    "intake": 180.0,
    "task_discovery": 180.0,
}
DEFAULT_TIMEOUT_S = 600.0  # an action with no timeout of its own
# The protocol's line limit (DESIGN §3): a smaller one may be configured, never a larger.
MAX_LINE = 262_144
ARTIFACT_MAX_BYTES = 1 << 30
