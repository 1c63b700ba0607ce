"""The NDJSON wire protocol: framing on bytes, typed messages, validation.

One UTF-8 JSON object per line, lines split only on ``b"\\n"``, at most
:data:`MAX_LINE` bytes a line (newline excluded), enforced when reading and when
writing. The ``kind`` field selects the schema: command, event, heartbeat, log.

The parser is total (DESIGN.md §5.10): :func:`read_message` turns every byte
sequence into either a schema-valid message or a :class:`ProtocolError` value,
and raises nothing. Besides the line limit it refuses what Python's ``json``
would accept but no peer should send, or what would break lorch further on:
nesting deeper than :data:`MAX_DEPTH`, ``NaN`` / ``Infinity`` and numbers that
overflow to them, integers outside 64 bits, and lone UTF-16 surrogates
(``"\\ud800"``), which cannot be written back as UTF-8 (docs/decisions.md D22).
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from lorch.wire import schemas
from lorch.wire.errors import BadEncoding, BadJSON, FramingError, LineTooLong, SchemaError
from lorch.wire.redact import NO_SECRETS, Redactor
from lorch.wire.vocabulary import KINDS, MAX_LINE

# Arrays and objects nested deeper than this are refused before decoding.
MAX_DEPTH = 64
# Integers must fit in 64 bits (signed), as every JSON peer can represent them.
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
PREFIX_LEN = 80  # characters of a bad line kept in its protocol-error record
# Bytes of a bad line kept to make that prefix: enough to see (and redact) a
# secret that straddles the cut, and to undo JSON escapes around it.
PREFIX_WINDOW = 4096
REASON_LEN = 300  # characters of a protocol error's reason (it may quote the line)

# The shapes of messages and records are the JSON schemas in schemas/v1/, checked
# where they enter (decode, the ledger's read); past that point they are plain
# JSON objects (docs/decisions.md D39).
# Any record of the ledger, or message on the wire, once parsed (a JSON object).
Record = dict[str, Any]


def now_rfc3339() -> str:
    """Current UTC time, RFC 3339 with microseconds and a ``Z``."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def new_message_id(prefix: str) -> str:
    return f"{prefix}-{os.urandom(6).hex()}"  # 48 random bits, as 12 hex digits


def prefix_of(data: bytes) -> bytes:
    return data[:PREFIX_LEN]


def window_of(data: bytes) -> bytes:
    """The first bytes of a bad line, as kept for its record (see :func:`safe_prefix`)."""
    return data[:PREFIX_WINDOW]


def encode(message: Record, limit: int = MAX_LINE) -> bytes:
    """One message as one line, newline included; refuses lines over ``limit``."""
    line = json.dumps(message, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()
    if len(line) > limit:
        raise LineTooLong(
            f"message of {len(line)} bytes exceeds the {limit}-byte line limit; "
            "send large content as a file referenced by path and sha256",
            size=len(line),
            prefix=prefix_of(line),
        )
    return line + b"\n"


class _Refused(ValueError):
    """A value ``json`` would decode but lorch does not accept (raised from hooks)."""


def _parse_int(text: str) -> int:
    # The digit count is checked before converting: a 5,000-digit integer
    # would otherwise cost a quadratic conversion, or raise past Python's limit.
    if len(text.lstrip("-")) > 19:
        raise _Refused(f"integer of {len(text.lstrip('-'))} digits (at most 64 bits)")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise _Refused(f"integer {text} is outside 64 bits")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Refused(f"number {text[:40]} overflows to infinity")
    return value


def _parse_constant(name: str) -> Any:
    raise _Refused(f"{name} is not JSON")


_DECODER = json.JSONDecoder(
    parse_int=_parse_int, parse_float=_parse_float, parse_constant=_parse_constant
)
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _too_deep(line: bytes) -> bool:
    """Is any array or object nested deeper than :data:`MAX_DEPTH`?"""
    if line.count(b"[") + line.count(b"{") <= MAX_DEPTH:
        return False  # cannot be: the common case costs two counts
    depth = 0
    for b in _STRING.sub(b"", line).translate(None, _NOT_BRACKETS):
        if b in b"[{":
            depth += 1
            if depth > MAX_DEPTH:
                return True
        else:
            depth -= 1
    return False


def _has_lone_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if _SURROGATE.search(v):
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def parse_line(line: bytes, limit: int = MAX_LINE) -> Record:
    """Decode one line (without its newline) to a JSON object; no schema check.

    ``limit`` is the longest line taken (the protocol's; the ACP transport's is larger).

    Raises only :class:`FramingError` (with the line's size and prefix).
    """

    def bad(reason: str, cls: type[FramingError] = BadJSON) -> FramingError:
        return cls(reason, size=len(line), prefix=prefix_of(line), window=window_of(line))

    if len(line) > limit:
        raise bad(f"line of {len(line)} bytes exceeds the {limit}-byte limit", LineTooLong)
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise bad(f"line is not valid UTF-8 (byte {e.start})", BadEncoding) from None
    if _too_deep(line):
        raise bad(f"line nests arrays or objects more than {MAX_DEPTH} deep")
    try:
        value = _DECODER.decode(text)
    except json.JSONDecodeError as e:
        raise bad(f"line is not valid JSON: {e.msg} at column {e.colno}") from None
    except _Refused as e:
        raise bad(f"line is not acceptable JSON: {e}") from None
    except (ValueError, RecursionError) as e:  # belt and braces: nothing escapes
        raise bad(f"line is not acceptable JSON: {type(e).__name__}") from None
    if not isinstance(value, dict):
        raise bad(f"line is JSON {type(value).__name__}, expected an object")
    if _SURROGATE_ESCAPE.search(line) and _has_lone_surrogate(value):
        raise bad("line has a lone UTF-16 surrogate escape (\\ud800-\\udfff) in a string")
    return value


def validate_message(message: Record, *, source: str = "") -> str:
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


def decode(line: bytes, *, source: str = "") -> Record:
    """Parse and validate one line (without newline)."""
    message = parse_line(line)
    validate_message(message, source=source)
    return message


@dataclass(frozen=True)
class ProtocolError:
    """A line that is not a valid message, as lorch records it (``system.protocol_error``).

    ``prefix`` holds the line's first :data:`PREFIX_WINDOW` bytes, unredacted;
    :meth:`payload` makes the record, with a redacted reason and a safe prefix.
    """

    reason: str
    size: int
    prefix: bytes

    @classmethod
    def of(cls, error: FramingError | SchemaError, line: bytes) -> ProtocolError:
        if isinstance(error, FramingError):
            return cls(str(error), error.size or len(line), error.window or window_of(line))
        return cls(str(error), len(line), window_of(line))

    def payload(self, role: str, redactor: Redactor = NO_SECRETS) -> dict[str, Any]:
        return {
            "role": role,
            "reason": printable(redactor.cut(self.reason, REASON_LEN)),
            "size": self.size,
            "prefix": safe_prefix(self.prefix, redactor, whole=self.size <= len(self.prefix)),
        }


def read_message(line: bytes, redactor: Redactor = NO_SECRETS) -> Record | ProtocolError:
    """One line from an agent (without newline): a valid message, or why not.

    Total: no byte sequence raises. Every string of the decoded message is
    redacted before it is validated (and before anything records it).
    """
    try:
        message = redactor.value(parse_line(line))
        validate_message(message)
    except (FramingError, SchemaError) as e:
        return ProtocolError.of(e, line)
    return message  # type: ignore[no-any-return]


_ESCAPE = re.compile(r'\\(?:u([0-9a-fA-F]{4})|(["\\/bfnrt]))')
_SIMPLE_ESCAPES = {
    '"': '"',
    "\\": "\\",
    "/": "/",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
}
_PARTIAL_ESCAPE = re.compile(r"\\(u[0-9a-fA-F]{0,3})?$")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _unescape(text: str) -> str:
    """JSON string escapes undone, leniently (the text need not be valid JSON)."""
    out = _ESCAPE.sub(
        lambda m: chr(int(m.group(1), 16)) if m.group(1) else _SIMPLE_ESCAPES[m.group(2)], text
    )
    # Escaped surrogate pairs become one character; lone ones become U+FFFD.
    return out.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def printable(text: str) -> str:
    """Control characters (a terminal escape sequence, say) shown as ``\\xNN``."""
    return _UNPRINTABLE.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def safe_prefix(raw: bytes, redactor: Redactor = NO_SECRETS, *, whole: bool = False) -> str:
    """The first :data:`PREFIX_LEN` characters of a bad line, safe to record and print.

    Decoded leniently (invalid UTF-8 replaced, JSON escapes undone, so an
    escaped secret is seen as itself), redacted, cut, and masked at the cut
    where a secret may go on past it. ``whole``: ``raw`` is the entire line.
    """
    text = raw.decode("utf-8", "replace")
    if not whole:
        text = _PARTIAL_ESCAPE.sub("", text)
    return printable(redactor.cut(_unescape(text), PREFIX_LEN, whole=whole))


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
        self._discard_window = b""

    def feed(self, data: bytes) -> Iterator[bytes | FramingError]:
        start = 0
        while True:
            nl = data.find(b"\n", start)
            chunk = data[start:] if nl < 0 else data[start:nl]
            if self._discarding:
                self._discarding += len(chunk)
            elif len(self._buf) + len(chunk) > self.limit:
                self._discarding = len(self._buf) + len(chunk)
                self._discard_window = bytes((self._buf + chunk)[:PREFIX_WINDOW])
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
                    prefix=self._discard_window[:PREFIX_LEN],
                    window=self._discard_window,
                )
            else:
                yield bytes(self._buf)
                self._buf.clear()
            start = nl + 1

    def pending(self) -> bytes:
        """Bytes received after the last newline (a partial line)."""
        return bytes(self._buf)
