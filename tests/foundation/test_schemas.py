"""Every schema: a valid example; required fields, enums and extra properties enforced."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from lorch.wire import schemas

TS = "2026-11-24T12:00:00.123Z"
IK = "ik:" + "a" * 64
SNAP = "snap-0123456789ab"
SHA = "sha256:" + "b" * 64
RUN = "run-20261124-120000-0123abcd"

VALID: dict[str, dict[str, Any]] = {
    "command": {
        "kind": "command",
        "message_id": "cmd-1",
        "correlation_id": "corr-T-0042-1",
        "task_id": "T-0042",
        "idempotency_key": IK,
        "to": {"agent_type": "builder"},
        "action": "implement",
        "inputs": {"round": 1},
        "expected_outputs": [{"path": "src/x.py", "required": True}],
        "version": {"snapshot_id": SNAP},
        "deadline": TS,
        "retry": {"attempt": 0, "max_attempts": 3},
        "priority": 5,
    },
    "event": {
        "kind": "event",
        "message_id": "evt-1",
        "correlation_id": "corr-T-0042-1",
        "task_id": "T-0042",
        "from": {"agent_type": "builder", "agent_id": "builder#1"},
        "event": "artifact.produced",
        "status": "success",
        "payload": {},
        "artifacts": [{"path": "src/x.py", "sha256": SHA, "size": 3}],
        "observed_version": {"snapshot_id": SNAP},
        "occurred_at": TS,
    },
    "heartbeat": {
        "kind": "heartbeat",
        "agent": {"agent_type": "reviewer", "agent_id": "reviewer#1"},
        "seq": 0,
        "status": "ready",
        "pid": 42,
        "uptime_s": 0.5,
        "last_activity_at": TS,
    },
    "log": {"kind": "log", "level": "info", "message": "hello", "timestamp": TS},
    "receipt": {
        "run_id": RUN,
        "task_id": "T-0042",
        "step": 1,
        "action": "review",
        "agent_type": "reviewer",
        "idempotency_key": IK,
        "correlation_id": "corr-T-0042-2",
        "command_message_id": "cmd-2",
        "snapshot_id": SNAP,
        "terminal_event": "review.completed",
        "event_ids": ["evt-2"],
        "artifacts": [],
        "completed_at": TS,
    },
    "run-state": {
        "run_id": RUN,
        "task_id": "T-0042",
        "status": "running",
        "stage": "review",
        "snapshot_id": SNAP,
        "started_at": TS,
        "updated_at": TS,
        "ledger_records": 7,
        "pending": None,
        "agents": {"builder": {"pid": 10, "pgid": 10}},
        "failure": None,
    },
    "snapshot-manifest": {
        "snapshot_id": SNAP,
        "created_at": TS,
        "files": [{"path": "a.txt", "sha256": SHA, "size": 1, "mtime": 1.5}],
    },
    "index": {
        "runs": [
            {
                "run_id": RUN,
                "task_id": "T-0042",
                "status": "completed",
                "started_at": TS,
                "updated_at": TS,
                "ledger": f"events/{RUN}.ndjson",
            }
        ]
    },
    "config": {
        "version": "1",
        "agents": {
            "builder": {"cmd": ["mockagent"]},
            "reviewer": {"cmd": ["mockagent"]},
            "spec_maintainer": {"cmd": ["mockagent"]},
        },
    },
    "review-verdict": {
        "status": "changes_requested",
        "summary": "one bug",
        "comments": [{"path": "src/x.py", "line": 3, "text": "off by one"}],
    },
    "spec-notes-verdict": {
        "status": "updated",
        "summary": "documented the greeting",
        "notes": [{"path": "specs/SPEC.md", "text": "added section 2"}],
    },
}

ENUMS = [
    ("command", ["to", "agent_type"]),
    ("command", ["action"]),
    ("event", ["from", "agent_type"]),
    ("event", ["event"]),
    ("heartbeat", ["status"]),
    ("heartbeat", ["agent", "agent_type"]),
    ("log", ["level"]),
    ("receipt", ["action"]),
    ("receipt", ["terminal_event"]),
    ("run-state", ["status"]),
    ("run-state", ["stage"]),
    ("index", ["runs", 0, "status"]),
    ("review-verdict", ["status"]),
    ("spec-notes-verdict", ["status"]),
]
PATTERNS = [
    ("command", ["idempotency_key"], "ik:short"),
    ("command", ["version", "snapshot_id"], "snap-XYZ"),
    ("command", ["deadline"], "2026-11-24T12:00:00+02:00"),
    ("command", ["task_id"], "../etc"),
    ("event", ["artifacts", 0, "sha256"], "md5:abc"),
    ("receipt", ["run_id"], "run-1"),
]


def _set(doc: Any, path: list[Any], value: Any) -> None:
    for p in path[:-1]:
        doc = doc[p]
    doc[path[-1]] = value


def test_all_schemas_are_valid_schemas() -> None:
    assert sorted(VALID) == sorted(schemas.NAMES)
    from jsonschema import Draft202012Validator

    for name in (*schemas.NAMES, "fixture"):
        path = schemas.schema_path(name)
        Draft202012Validator.check_schema(json.loads(path.read_text()))


@pytest.mark.parametrize("name", schemas.NAMES)
def test_valid_example(name: str) -> None:
    assert schemas.errors(name, VALID[name]) == []


@pytest.mark.parametrize("name", schemas.NAMES)
def test_every_required_field_and_no_extra_fields(name: str) -> None:
    required = schemas.load_schema(name).get("required", [])
    assert required
    for field in required:
        doc = copy.deepcopy(VALID[name])
        del doc[field]
        assert not schemas.is_valid(name, doc), f"{name} without {field}"
    doc = copy.deepcopy(VALID[name])
    doc["surprise"] = 1
    errs = schemas.errors(name, doc)
    assert errs and "surprise" in errs[0][1]


@pytest.mark.parametrize(("name", "path"), ENUMS)
def test_enums_enforced(name: str, path: list[Any]) -> None:
    doc = copy.deepcopy(VALID[name])
    _set(doc, path, "not-in-the-enum")
    assert not schemas.is_valid(name, doc)


@pytest.mark.parametrize(("name", "path", "value"), PATTERNS)
def test_patterns_enforced(name: str, path: list[Any], value: str) -> None:
    doc = copy.deepcopy(VALID[name])
    _set(doc, path, value)
    assert not schemas.is_valid(name, doc)


def test_error_message_names_path() -> None:
    doc = copy.deepcopy(VALID["command"])
    doc["retry"]["attempt"] = -1
    with pytest.raises(schemas.SchemaError, match=r"\$\.retry\.attempt"):
        schemas.validate("command", doc)
