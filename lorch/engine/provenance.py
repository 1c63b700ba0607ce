"""An agent speaks only for itself (DESIGN.md §5.11).

lorch attributes each line to the role whose pipe it came from, never to what
the line claims. A message from an agent's channel is that agent's to say only
when it is an event, claims to come from that very role, is of a type that role
emits, and answers the command lorch sent that agent (its correlation id and
task). Anything else — an event claiming to be ``system`` or another role, a
``system.*`` record, a reviewer's verdict from the builder, a reply while no
command is in flight — is a protocol error, recorded as such and never folded
as a fact. Only lorch writes ``system.*`` records.
"""

from __future__ import annotations

from typing import Any

# What each role may say, besides "error" (and "log" events).
_COMMON = frozenset({"artifact.produced", "error", "log"})
EMITS: dict[str, frozenset[str]] = {
    "builder": _COMMON | {"builder.progress", "builder.completed"},
    "reviewer": _COMMON | {"review.completed"},
    "spec_maintainer": _COMMON
    | {"spec.updated", "spec.no_changes_needed", "spec.changes_requested"},
    "orchestration": _COMMON
    | {
        "orchestration.proposed_tasks",
        "orchestration.needs_clarification",
        "orchestration.plan_conflict",
    },
}


def refusal(role: str, message: dict[str, Any], command: dict[str, Any] | None) -> str | None:
    """Why ``message``, read from ``role``'s channel, is not that agent's to say; None if it is.

    ``command``: the command lorch has in flight to this role (None: it has none).
    ``message`` is schema-valid (so its fields have their types).
    """
    kind = message.get("kind")
    if kind != "event":
        return f"{role} sent a {kind}; an agent sends events"
    name = str(message.get("event"))
    claimed = str((message.get("from") or {}).get("agent_type"))
    if claimed != role:
        who = "lorch (system)" if claimed == "system" else f"the {claimed}"
        return f"event {name} from the {role}'s channel claims to come from {who}"
    if name.startswith("system."):
        return f"{role} sent {name}; only lorch writes system.* records"
    if name not in EMITS.get(role, _COMMON):
        return f"{role} sent {name}, which only another role may send"
    if command is None:
        return (
            f"{role} sent {name} for correlation {message.get('correlation_id')}, "
            "but no command is in flight to it"
        )
    if message.get("correlation_id") != command.get("correlation_id") or message.get(
        "task_id"
    ) != command.get("task_id"):
        return (
            f"event {name} for task {message.get('task_id')} / correlation "
            f"{message.get('correlation_id')}, expected {command.get('task_id')} / "
            f"{command.get('correlation_id')} (the command sent to the {role})"
        )
    return None
