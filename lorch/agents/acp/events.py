"""The terminal event lorch builds when an ACP turn ends (not the agent's words).

- builder: the artifacts are the files the turn changed (between the command's
  pre-turn checkpoint and the workspace now), hashed on disk by lorch;
  ``payload.tests`` comes from ``task.test_cmd``, run by lorch after the turn.
- reviewer / spec maintainer: the verdict file the prompt asked for
  (``reviews/<task>.json``, ``spec_notes/<task>.json``), validated against its
  schema and turned into ``review.completed`` or ``spec.*``.

A missing or invalid verdict is a :class:`VerdictError`: one line naming the
file and the problem. The transport reports it as an ``error`` event, so the
attempt fails and is retried with the same key.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from lorch.agents.acp.prompts import verdict_path
from lorch.store import safefs
from lorch.store.paths import sha256_regular
from lorch.store.snapshot import EXCLUDED_NAMES
from lorch.wire import protocol, schemas
from lorch.wire.errors import LorchError, PathEscape, SchemaError
from lorch.wire.protocol import Record
from lorch.wire.redact import NO_SECRETS, Redactor

SPEC_EVENTS = {
    "updated": "spec.updated",
    "no_changes_needed": "spec.no_changes_needed",
    "changes_requested": "spec.changes_requested",
}
VERDICT_SCHEMA = {"review": "review-verdict", "update_spec": "spec-notes-verdict"}
# A verdict file larger than this is not read (it is not a verdict).
VERDICT_LIMIT = 1 << 20
NO_TESTS = "no test command configured"


class VerdictError(LorchError):
    """The verdict file of a reviewer or spec maintainer is missing or invalid."""


def artifacts(workspace: Path, paths: list[str]) -> tuple[list[Record], list[str]]:
    """(artifacts with sha256 and size, deleted paths) for the files a turn changed."""
    arts: list[Record] = []
    deleted: list[str] = []
    for rel in paths:
        if any(part in EXCLUDED_NAMES for part in rel.split("/")):
            continue  # build output (__pycache__, node_modules): not the turn's work
        try:
            # By descriptor: no symlink followed, a FIFO refused without blocking.
            sha, size, _ = sha256_regular(workspace, rel)
        except (FileNotFoundError, NotADirectoryError):
            deleted.append(rel)
            continue
        except (PathEscape, IsADirectoryError, OSError):
            continue  # not a regular file inside the workspace: nothing to hash
        arts.append({"path": rel, "sha256": sha, "size": size})
    return arts, deleted


def read_verdict(workspace: Path, action: str, task_id: str) -> tuple[str, Record]:
    """(its path, the verdict) — or VerdictError naming the file and what is wrong."""
    rel = verdict_path(action, task_id)
    assert rel is not None, action
    try:
        # No symlink followed; a FIFO or device refused at once, never opened blocking.
        data = safefs.read_regular(os.path.realpath(workspace), rel, VERDICT_LIMIT)
    except FileNotFoundError:
        raise VerdictError(f"{rel}: missing: the agent wrote no verdict file") from None
    except safefs.TooLarge:
        raise VerdictError(f"{rel}: larger than {VERDICT_LIMIT} bytes; not a verdict") from None
    except (PathEscape, OSError) as e:
        raise VerdictError(f"{rel}: cannot read it: {e}") from None
    try:
        verdict = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise VerdictError(f"{rel}: not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise VerdictError(
            f"{rel}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    try:
        schemas.validate(VERDICT_SCHEMA[action], verdict)
    except SchemaError as e:
        raise VerdictError(f"{rel}: {e}") from None
    return rel, verdict


def event(command: Record, agent_id: str, name: str, **fields: Any) -> Record:
    """An event for ``command``, from its role, built by lorch."""
    return {
        "kind": "event",
        "message_id": protocol.new_message_id("evt"),
        "correlation_id": command["correlation_id"],
        "task_id": command["task_id"],
        "from": {"agent_type": command["to"]["agent_type"], "agent_id": agent_id},
        "event": name,
        **fields,
        "occurred_at": protocol.now_rfc3339(),
    }


def builder_completed(
    command: Record,
    agent_id: str,
    arts: list[Record],
    deleted: list[str],
    tests: Record,
    extra: Record,
) -> Record:
    payload = {"tests": tests, **extra}
    if deleted:
        payload["deleted"] = deleted
    return event(
        command, agent_id, "builder.completed", status="success", payload=payload, artifacts=arts
    )


def verdict_event(
    command: Record, agent_id: str, rel: str, verdict: Record, arts: list[Record], extra: Record
) -> Record:
    action = command["action"]
    status = str(verdict["status"])
    payload: Record = {"summary": verdict["summary"], **extra}
    if action == "review":
        payload["review_path"] = rel
        return event(
            command, agent_id, "review.completed", status=status, payload=payload, artifacts=arts
        )
    payload["notes_path"] = rel
    return event(
        command, agent_id, SPEC_EVENTS[status], status=status, payload=payload, artifacts=arts
    )


def error_event(command: Record, agent_id: str, code: str, message: str) -> Record:
    return event(
        command, agent_id, "error", status="failed", payload={"code": code, "message": message}
    )


def log_event(command: Record, agent_id: str, message: str, **payload: Any) -> Record:
    """A line of the agent's turn, for the ledger and the live transcript."""
    return event(command, agent_id, "log", payload={"message": message, **payload})


def one_line(e: BaseException, redactor: Redactor = NO_SECRETS) -> str:
    """An exception as one short line, for an error event or a log entry
    (redacted before it is cut: it may quote what the agent sent)."""
    text = str(e).strip().splitlines()
    return redactor.cut(f"{type(e).__name__}: {text[0] if text else ''}", 500)
