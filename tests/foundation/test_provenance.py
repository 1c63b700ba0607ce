"""Attribution by channel, not by claim (issue 14, point 2)."""

from __future__ import annotations

from typing import Any

import pytest

from lorch.engine.provenance import EMITS, refusal

CMD = {"correlation_id": "corr-T-1-1", "task_id": "T-1", "to": {"agent_type": "builder"}}


def ev(name: str, sender: str = "builder", **over: Any) -> dict[str, Any]:
    e = {
        "kind": "event",
        "message_id": "evt-1",
        "correlation_id": "corr-T-1-1",
        "task_id": "T-1",
        "from": {"agent_type": sender},
        "event": name,
        "occurred_at": "2026-12-01T00:00:00Z",
    }
    e.update(over)
    return e


def test_an_agent_s_own_answer_is_accepted() -> None:
    for role, names in EMITS.items():
        for name in names:
            assert refusal(role, ev(name, role), CMD) is None, (role, name)


@pytest.mark.parametrize(
    ("role", "message", "command", "why"),
    [
        ("builder", ev("system.run_completed", "system"), CMD, "claims to come from lorch"),
        ("builder", ev("system.agent_started"), CMD, "only lorch writes system.*"),
        ("builder", ev("review.completed", "reviewer"), CMD, "claims to come from the reviewer"),
        ("builder", ev("review.completed"), CMD, "only another role may send"),
        ("reviewer", ev("builder.completed", "reviewer"), CMD, "only another role may send"),
        ("spec_maintainer", ev("spec.updated", "spec_maintainer"), None, "no command"),
        ("builder", ev("builder.completed", correlation_id="corr-T-1-2"), CMD, "expected T-1"),
        ("builder", ev("builder.completed", task_id="T-2"), CMD, "expected T-1"),
        ("builder", {**CMD, "kind": "command"}, CMD, "sent a command"),
    ],
)
def test_what_is_not_the_agent_s_to_say(
    role: str, message: dict[str, Any], command: dict[str, Any] | None, why: str
) -> None:
    reason = refusal(role, message, command)
    assert reason is not None and why in reason, reason
