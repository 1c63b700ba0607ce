"""Commands and answers as the reducer sees them: building a command, a resend, what an answer says.

Pure functions of their arguments: the reducer (``lorch.core.workflow``) calls them
with what the folded ledger holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lorch.wire.canonical import canonical_json, digest, idempotency_key
from lorch.wire.protocol import Record
from lorch.wire.vocabulary import ROLE_OF

PRIORITY = 5

# A fresh message id and deadline for a command of the given action. Asked for
# only when a command is built: deciding to check an answer costs nothing.
Fresh = Callable[[str], tuple[str, str]]


def build_command(
    action: str,
    inputs: dict[str, Any],
    *,
    task_id: str,
    snapshot_id: str,
    number: int,
    max_attempts: int,
    fresh: Fresh,
    expected: list[dict[str, Any]] | None = None,
    correlation_id: str | None = None,
) -> Record:
    """Command ``action`` of the task: its key is a function of what it asks, nothing else.

    ``number`` counts the task's commands (it names the correlation id unless one is given).
    """
    message_id, deadline = fresh(action)
    expected_outputs = expected or []
    ik = idempotency_key(action, task_id, snapshot_id, inputs, expected_outputs)
    return {
        "kind": "command",
        "message_id": message_id,
        "correlation_id": correlation_id or f"corr-{task_id}-{number}",
        "task_id": task_id,
        "idempotency_key": ik,
        "to": {"agent_type": ROLE_OF[action]},
        "action": action,
        "inputs": inputs,
        "expected_outputs": expected_outputs,
        "version": {"snapshot_id": snapshot_id},
        "deadline": deadline,
        "retry": {"attempt": 0, "max_attempts": max_attempts},
        "priority": PRIORITY,
    }


def resend(command: Record, fresh: Fresh, attempt: int) -> Record:
    message_id, deadline = fresh(str(command["action"]))
    return {
        **command,
        "message_id": message_id,
        "deadline": deadline,
        "retry": {**command["retry"], "attempt": attempt},
    }


def answer_digest(event: Record) -> str:
    """What a loop command answers, as a digest: a pure function of the ledger."""
    return digest(
        {
            "event": event.get("event"),
            "status": event.get("status"),
            "payload": event.get("payload", {}),
            "artifacts": event.get("artifacts", []),
        }
    )


CAUSE_LEN = 400


def error_cause(payload: Any) -> str:
    """The words of an ``error`` event, for failure lines and the transcript.

    ``message`` and ``error`` (agents use either), then ``details`` and where
    (``file``, ``line``), on one line of at most :data:`CAUSE_LEN` characters.
    Payloads are redacted before they reach the ledger, so this is too.
    """
    if not isinstance(payload, dict):
        return "error event"
    said: list[str] = []
    for key in ("message", "error"):
        v = payload.get(key)
        if isinstance(v, str) and v.strip() and v.strip() not in said:
            said.append(v.strip())
    text = "; ".join(said)
    details = payload.get("details")
    if details not in (None, "", [], {}):
        try:
            shown = details if isinstance(details, str) else canonical_json(details)
        except (TypeError, ValueError):  # not JSON lorch can write: its repr
            shown = repr(details)
        text = f"{text} ({shown})" if text else shown
    where = payload.get("file")
    if isinstance(where, str) and where:
        line = payload.get("line")
        where += f":{line}" if isinstance(line, int) and not isinstance(line, bool) else ""
        text = f"{text} at {where}" if text else f"at {where}"
    text = " ".join(text.split()) or "error event"
    return text if len(text) <= CAUSE_LEN else text[: CAUSE_LEN - 1] + "…"
