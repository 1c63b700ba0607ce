"""Cassettes: the model calls of a run, one JSON line each, durable before they are used.

A line is one call the gateway forwarded upstream (model calls and the others:
model lists, token counts), written once the upstream's answer has ended and
fsynced before the answer's last byte is passed to the agent::

    {"v": 1, "provider": "anthropic", "fingerprint": "sha256:…", "model_call": true,
     "model": "claude-sonnet-4-5", "context": {…},        # what the caller set
     "request": {…},                                       # the normalized request
     "status": 200, "headers": [["content-type", "text/event-stream"], …],
     "chunks": ["event: message_start\ndata: {…}\n\n", {"base64": "…"}, …],
     "outcome": "complete" | "dropped",                    # dropped: the upstream cut it
     "usage": {"input_tokens": 12, …, "raw": {…}} | null}

A chunk is a string when its bytes are UTF-8, else ``{"base64": …}`` (a chunk may
end inside a character). Only the normalized request is kept: no request
header, so no authorization, ever; and each line is redacted of every key the
gateway saw in a request (``x-api-key``, ``authorization``, ``x-goog-api-key``,
``?key=``) before it is written, in case an upstream echoes one. A torn last
line (a crash mid-write) is ignored when the cassette is read; any other line
that is not a call is an error naming the file and line.
"""

from __future__ import annotations

import base64
import json
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lorch.store import atomic
from lorch.wire.canonical import canonical_json
from lorch.wire.checksum import is_checksum
from lorch.wire.errors import LorchError, StorageError
from lorch.wire.redact import Redactor

VERSION = 1
OUTCOMES = ("complete", "dropped")


class CassetteError(LorchError):
    """A cassette that cannot be read (exit 2: the user named it)."""

    exit_code = 2


@dataclass(frozen=True)
class Recorded:
    """One call of a cassette."""

    provider: str
    fingerprint: str
    model_call: bool
    request: dict[str, Any]
    status: int
    headers: tuple[tuple[str, str], ...]
    chunks: tuple[bytes, ...]
    outcome: str = "complete"
    model: str | None = None
    usage: dict[str, Any] | None = None
    context: Any = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "v": VERSION,
            "provider": self.provider,
            "fingerprint": self.fingerprint,
            "model_call": self.model_call,
            "model": self.model,
            "context": self.context,
            "request": self.request,
            "status": self.status,
            "headers": [list(h) for h in self.headers],
            "chunks": [_chunk_json(c) for c in self.chunks],
            "outcome": self.outcome,
            "usage": self.usage,
            **self.extra,
        }

    @classmethod
    def from_json(cls, obj: Any, where: str) -> Recorded:
        """A call from its JSON line; CassetteError naming ``where`` and the field."""
        if not isinstance(obj, dict):
            raise CassetteError(f"{where}: expected a JSON object")
        if obj.get("v") != VERSION:
            raise CassetteError(f"{where}: v: expected {VERSION}, found {obj.get('v')!r}")

        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            value = obj.get(key)
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise CassetteError(f"{where}: {key}: missing or not a {_kind(kind)}")
            return value

        fingerprint = need("fingerprint", str)
        if not is_checksum(fingerprint):
            raise CassetteError(f"{where}: fingerprint: expected sha256:<64 hex>")
        headers = need("headers", list)
        if not all(
            isinstance(h, list) and len(h) == 2 and all(isinstance(x, str) for x in h)
            for h in headers
        ):
            raise CassetteError(f"{where}: headers: expected [name, value] pairs of strings")
        chunks = tuple(_chunk_bytes(c, where) for c in need("chunks", list))
        outcome = need("outcome", str)
        if outcome not in OUTCOMES:
            raise CassetteError(f"{where}: outcome: expected one of {', '.join(OUTCOMES)}")
        usage = obj.get("usage")
        model = obj.get("model")
        known = {
            "v", "provider", "fingerprint", "model_call", "model", "context", "request",
            "status", "headers", "chunks", "outcome", "usage",
        }  # fmt: skip
        return cls(
            provider=need("provider", str),
            fingerprint=fingerprint,
            model_call=need("model_call", bool),
            request=need("request", dict),
            status=need("status", int),
            headers=tuple((h[0], h[1]) for h in headers),
            chunks=chunks,
            outcome=outcome,
            model=model if isinstance(model, str) else None,
            usage=usage if isinstance(usage, dict) else None,
            context=obj.get("context"),
            extra={k: v for k, v in obj.items() if k not in known},
        )


def _kind(kind: type | tuple[type, ...]) -> str:
    names = {str: "string", int: "integer", bool: "boolean", list: "list", dict: "object"}
    return names.get(kind, "value") if isinstance(kind, type) else "value"


def _chunk_json(chunk: bytes) -> str | dict[str, str]:
    try:
        return chunk.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(chunk).decode("ascii")}


def _chunk_bytes(value: Any, where: str) -> bytes:
    if isinstance(value, str):
        return value.encode("utf-8", "surrogatepass")
    if isinstance(value, dict) and isinstance(value.get("base64"), str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except ValueError:
            pass
    raise CassetteError(f"{where}: chunks: expected a string or {{'base64': …}}")


class Cassette:
    """A cassette opened to append calls; thread-safe; each append is durable on return.

    Its opener closes it (a context manager): gateways only append to it, and one
    cassette may take the calls of several gateways (one per role of a run).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        existed = self.path.exists()
        self._lock = threading.Lock()
        self._fh: IO[str] = atomic.open_append(self.path)
        if not existed:
            atomic.fsync_dir(self.path.parent)

    def append(self, call: Recorded, secrets: Iterable[str] = ()) -> None:
        """Write ``call`` as one line, redacted of ``secrets``, and fsync it."""
        line = Redactor(list(secrets)).text(canonical_json(call.to_json()))
        with self._lock:
            try:
                self._fh.write(line + "\n")
                self._fh.flush()
                os.fsync(self._fh.fileno())
            except OSError as e:
                raise StorageError(f"cannot write {self.path}: {e.strerror}") from e

    def close(self) -> None:
        with self._lock:
            self._fh.close()

    def __enter__(self) -> Cassette:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def load(path: str | os.PathLike[str]) -> list[Recorded]:
    """The calls of the cassette at ``path``, in the order they were recorded."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CassetteError(f"cannot read cassette {path}: {e.strerror}") from None
    lines = data.split(b"\n")
    # The last piece has no newline: empty, or a line a crash tore (never used).
    calls = []
    for number, raw in enumerate(lines[:-1], start=1):
        if not raw.strip():
            continue
        where = f"{path}:{number}"
        try:
            obj = json.loads(raw)
        except (ValueError, UnicodeDecodeError, RecursionError):
            raise CassetteError(f"{where}: not a JSON line") from None
        calls.append(Recorded.from_json(obj, where))
    return calls
