"""The NDJSON wire protocol: framing on bytes, typed messages, validation.

One UTF-8 JSON object per line, lines split only on ``b"\\n"``, at most
:data:`MAX_LINE` bytes a line (newline excluded), enforced when reading and when
writing. The ``kind`` field selects the schema: command, event, heartbeat, log.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal, NotRequired, TypedDict

from lorch import schemas
from lorch.errors import BadEncoding, BadJSON, FramingError, LineTooLong, SchemaError

MAX_LINE = 262_144
KINDS = ("command", "event", "heartbeat", "log")
ROLES = ("builder", "reviewer", "spec_maintainer", "orchestration")
ACTIONS = ("implement", "implement_changes", "review", "update_spec", "intake", "task_discovery")
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
PREFIX_LEN = 80

AgentType = Literal["builder", "reviewer", "spec_maintainer", "orchestration"]


class AgentRef(TypedDict):
    agent_type: str
    agent_id: NotRequired[str]


class Version(TypedDict):
    snapshot_id: str
    specs_hash: NotRequired[str]
    code_hash: NotRequired[str]


class Retry(TypedDict):
    attempt: int
    max_attempts: int


class ExpectedOutput(TypedDict):
    path: str
    description: NotRequired[str]
    required: NotRequired[bool]


class Artifact(TypedDict):
    path: str
    sha256: str
    size: int


class Command(TypedDict):
    kind: Literal["command"]
    message_id: str
    correlation_id: str
    task_id: str
    idempotency_key: str
    to: AgentRef
    action: str
    inputs: dict[str, Any]
    expected_outputs: NotRequired[list[ExpectedOutput]]
    version: Version
    deadline: str
    retry: Retry
    priority: int


# "from" is a Python keyword, so Event uses the functional TypedDict form.
Event = TypedDict(
    "Event",
    {
        "kind": Literal["event"],
        "message_id": str,
        "correlation_id": str,
        "task_id": str,
        "from": AgentRef,
        "event": str,
        "occurred_at": str,
        "status": NotRequired[str],
        "payload": NotRequired[dict[str, Any]],
        "artifacts": NotRequired[list[Artifact]],
        "observed_version": NotRequired[dict[str, str]],
    },
)


class Heartbeat(TypedDict):
    kind: Literal["heartbeat"]
    agent: AgentRef
    seq: int
    status: str
    pid: int
    uptime_s: float
    last_activity_at: str
    ppid: NotRequired[int]
    stats: NotRequired[dict[str, Any]]
    task_id: NotRequired[str]


class Log(TypedDict):
    kind: Literal["log"]
    level: str
    message: str
    timestamp: str
    fields: NotRequired[dict[str, Any]]


Message = dict[str, Any]


def now_rfc3339() -> str:
    """Current UTC time, RFC 3339 with microseconds and a ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_message_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(6).hex()}"  # 48 random bits, as 12 hex digits


def prefix_of(data: bytes) -> bytes:
    return data[:PREFIX_LEN]


def encode(message: Message) -> bytes:
    """One message as one line, newline included; refuses lines over the limit."""
    line = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if len(line) > MAX_LINE:
        raise LineTooLong(
            f"message of {len(line)} bytes exceeds the {MAX_LINE}-byte line limit; "
            "send large content as a file referenced by path and sha256",
            size=len(line),
            prefix=prefix_of(line),
        )
    return line + b"\n"


def parse_line(line: bytes) -> Message:
    """Decode one line (without its newline) to a JSON object; no schema check."""
    if len(line) > MAX_LINE:
        raise LineTooLong(
            f"line of {len(line)} bytes exceeds the {MAX_LINE}-byte limit",
            size=len(line),
            prefix=prefix_of(line),
        )
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadEncoding(
            f"line is not valid UTF-8 (byte {e.start})", size=len(line), prefix=prefix_of(line)
        ) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise BadJSON(
            f"line is not valid JSON: {e.msg} at column {e.colno}",
            size=len(line),
            prefix=prefix_of(line),
        ) from None
    if not isinstance(value, dict):
        raise BadJSON(
            f"line is JSON {type(value).__name__}, expected an object",
            size=len(line),
            prefix=prefix_of(line),
        )
    return value


def validate_message(message: Message, *, source: str = "") -> str:
    """Check a decoded message against the schema its ``kind`` names; return the kind."""
    kind = message.get("kind")
    if kind not in KINDS:
        where = f"{source}: " if source else ""
        raise SchemaError(
            f"{where}$.kind: expected one of {', '.join(KINDS)}, found {json.dumps(kind)}",
            schema="envelope",
            path="$.kind",
        )
    schemas.validate(str(kind), message, source=source)
    return str(kind)


def decode(line: bytes, *, source: str = "") -> Message:
    """Parse and validate one line (without newline)."""
    message = parse_line(line)
    validate_message(message, source=source)
    return message


def read_chunks(fd: int, size: int = 65536) -> Iterator[bytes]:
    """Bytes from a pipe until EOF (or until it breaks), one read at a time."""
    while True:
        try:
            data = os.read(fd, size)
        except OSError:
            return
        if not data:
            return
        yield data


class LineSplitter:
    """Incremental splitter: feed bytes, get complete lines (without ``\\n``).

    An over-long line is reported once, as a :class:`LineTooLong` item, and its
    remaining bytes are discarded up to the next newline: memory stays bounded
    even if a peer never sends a newline.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.limit = limit
        self._buf = bytearray()
        self._discarding = 0  # bytes of an over-long line seen so far (0: not discarding)
        self._discard_prefix = b""

    def feed(self, data: bytes) -> Iterator[bytes | FramingError]:
        start = 0
        while True:
            nl = data.find(b"\n", start)
            chunk = data[start:] if nl < 0 else data[start:nl]
            if self._discarding:
                self._discarding += len(chunk)
            elif len(self._buf) + len(chunk) > self.limit:
                self._discarding = len(self._buf) + len(chunk)
                self._discard_prefix = bytes((self._buf + chunk)[:PREFIX_LEN])
                self._buf.clear()
            else:
                self._buf += chunk
            if nl < 0:
                return
            if self._discarding:
                size = self._discarding
                self._discarding = 0
                yield LineTooLong(
                    f"line of {size} bytes exceeds the {self.limit}-byte limit",
                    size=size,
                    prefix=self._discard_prefix,
                )
            else:
                yield bytes(self._buf)
                self._buf.clear()
            start = nl + 1

    def pending(self) -> bytes:
        """Bytes received after the last newline (a partial line)."""
        return bytes(self._buf)
