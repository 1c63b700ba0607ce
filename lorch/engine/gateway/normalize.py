"""Normalized requests and their fingerprints: when two model requests are "the same".

A recorded answer may stand in for a new request only when the two requests are
the same once their volatile parts are set aside. The normalized request is::

    {"method": "POST", "path": "/v1/messages",
     "query": [["alt", "sse"]],                 # sorted; credentials dropped
     "headers": {"anthropic-version": "2023-06-01"},   # only the kept headers
     "body": <the JSON body, normalized>}       # or {"sha256": …, "size": …} if not JSON

and its fingerprint is the ``sha256:`` digest of its canonical JSON
(:func:`lorch.wire.canonical.digest`). The body is normalized in two steps:

1. **dropped fields**: each dotted path of ``drop`` (``metadata.user_id``) is
   removed wherever it is (a list on the way is walked item by item);
2. **rules**: every string (object keys are left alone) is rewritten by each
   ``(pattern, replacement)`` rule in turn, Python ``re`` syntax.

The default rules (:data:`DEFAULT_RULES`) replace what differs between two
otherwise identical runs of an agent: UUIDs (session and request ids), ISO dates
and times (Claude Code and Codex tell the model today's date), and the name of a
fresh temporary directory (``/tmp/tmp.x8Yq`` → ``/tmp/<tmp>``, the rest of the
path kept). The default dropped fields are ones agents fill with a session or
user id: Anthropic's ``metadata.user_id``, OpenAI's ``prompt_cache_key`` and
``user``. Headers are left out except :data:`DEFAULT_HEADERS` (they choose the
API's behaviour; authorization never is one: credentials are never part of a
normalized request). Query parameters that carry a key (``key``) are dropped.

A :class:`Normalizer` is a plain value (``to_dict`` / ``from_dict``) so a
cassette names the rules it was recorded with and a user may pass their own.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lorch.wire.canonical import digest
from lorch.wire.errors import ConfigError

DEFAULT_RULES: tuple[tuple[str, str], ...] = (
    (r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", "<uuid>"),
    (
        r"\b\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?(?:Z|[+-]\d{2}:?\d{2})?",
        "<datetime>",
    ),
    (r"\b\d{4}-\d{2}-\d{2}\b", "<date>"),
    (r"(/private/var/folders/[^/\s]+/[^/\s]+/T|/var/tmp|/tmp)/[^/\s\"'`]+", r"\1/<tmp>"),
)
DEFAULT_DROP: tuple[str, ...] = ("metadata.user_id", "prompt_cache_key", "user")
DEFAULT_HEADERS: tuple[str, ...] = ("anthropic-version", "anthropic-beta", "openai-beta")
# Query parameters that carry credentials (Gemini's ``?key=``): never normalized in.
SECRET_PARAMS = frozenset({"key", "api_key", "access_token"})
_NOT_JSON: Any = object()  # what decode_json gives for a body that is not JSON
CACHED_FROM = 256  # strings at least this long are normalized once
CACHE_CHARS = 64 * 1024 * 1024  # the cache is emptied when it would hold more


@dataclass(frozen=True)
class Normalizer:
    """The rules a request is normalized by (see the module docstring)."""

    rules: tuple[tuple[str, str], ...] = DEFAULT_RULES
    drop: tuple[str, ...] = DEFAULT_DROP
    headers: tuple[str, ...] = DEFAULT_HEADERS
    _compiled: tuple[tuple[re.Pattern[str], str], ...] = field(
        init=False, repr=False, compare=False
    )
    # An agent sends its whole conversation with every request: each long string
    # is normalized once, then found here (Python's re takes ~40 ns a character).
    _seen: dict[str, str] = field(init=False, repr=False, compare=False)
    _seen_chars: list[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        compiled = []
        for i, (pattern, replacement) in enumerate(self.rules):
            try:
                compiled.append((re.compile(pattern), replacement))
            except re.error as e:
                raise ConfigError(
                    f"normalizer rule {i + 1} ({pattern!r}) is not a regular expression: {e}"
                ) from None
        object.__setattr__(self, "_compiled", tuple(compiled))
        object.__setattr__(self, "_seen", {})
        object.__setattr__(self, "_seen_chars", [0])

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": [list(r) for r in self.rules],
            "drop": list(self.drop),
            "headers": list(self.headers),
        }

    @classmethod
    def from_dict(cls, value: Any, where: str = "normalizer") -> Normalizer:
        """A normalizer from its ``to_dict`` form (missing keys: the defaults)."""
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected an object, found {type(value).__name__}")
        unknown = sorted(set(value) - {"rules", "drop", "headers"})
        if unknown:
            raise ConfigError(f"{where}: unknown field {unknown[0]!r} (rules, drop, headers)")
        rules = value.get("rules", [list(r) for r in DEFAULT_RULES])
        if not isinstance(rules, list) or not all(
            isinstance(r, list) and len(r) == 2 and all(isinstance(x, str) for x in r)
            for r in rules
        ):
            raise ConfigError(f"{where}.rules: expected a list of [pattern, replacement] strings")
        lists = {}
        for key, default in (("drop", DEFAULT_DROP), ("headers", DEFAULT_HEADERS)):
            items = value.get(key, list(default))
            if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
                raise ConfigError(f"{where}.{key}: expected a list of strings")
            lists[key] = tuple(items)
        return cls(
            rules=tuple((r[0], r[1]) for r in rules),
            drop=lists["drop"],
            headers=tuple(h.lower() for h in lists["headers"]),
        )

    # normalizing

    def text(self, s: str) -> str:
        if len(s) < CACHED_FROM:
            return self._apply(s)
        done = self._seen.get(s)
        if done is None:
            done = self._apply(s)
            if self._seen_chars[0] + len(s) > CACHE_CHARS:
                self._seen.clear()
                self._seen_chars[0] = 0
            self._seen[s] = done
            self._seen_chars[0] += len(s)
        return done

    def _apply(self, s: str) -> str:
        for pattern, replacement in self._compiled:
            s = pattern.sub(replacement, s)
        return s

    def value(self, v: Any) -> Any:
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {k: self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        return v

    def body(self, body: Any) -> Any:
        for path in self.drop:
            body = _drop(body, path.split("."))
        return self.value(body)

    def request(
        self,
        method: str,
        path: str,
        query: Iterable[tuple[str, str]],
        headers: Mapping[str, str],
        body: bytes,
        decoded: Any = _NOT_JSON,
    ) -> dict[str, Any]:
        """The normalized request (see the module docstring).

        ``decoded``: ``decode_json(body)`` when the caller has it already.
        """
        if decoded is _NOT_JSON:
            decoded = decode_json(body)
        normalized_body: Any = None
        if decoded is not _NOT_JSON:
            # A body nested deeper than the walk can go is kept by its digest.
            with contextlib.suppress(RecursionError):
                normalized_body = self.body(decoded)
        if normalized_body is None and decoded is not None:
            normalized_body = {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body)}
        kept = {k.lower(): v for k, v in headers.items() if k.lower() in self.headers}
        return {
            "method": method,
            "path": self.text(path),
            "query": sorted([k, self.text(v)] for k, v in query if k not in SECRET_PARAMS),
            "headers": dict(sorted(kept.items())),
            "body": normalized_body,
        }


def decode_json(body: bytes) -> Any:
    """The JSON value of ``body``; ``None`` for an empty body; a sentinel for anything else."""
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return _NOT_JSON


def is_json(value: Any) -> bool:
    return value is not _NOT_JSON


def _drop(value: Any, path: list[str]) -> Any:
    if isinstance(value, list):
        return [_drop(x, path) for x in value]
    if not isinstance(value, dict) or path[0] not in value:
        return value
    if len(path) == 1:
        return {k: v for k, v in value.items() if k != path[0]}
    return {**value, path[0]: _drop(value[path[0]], path[1:])}


def fingerprint(normalized: dict[str, Any]) -> str:
    return digest(normalized)


# --- where two requests differ --------------------------------------------------------


def leaves(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every scalar of ``value`` by its path (``body.messages[2].content``)."""
    out: dict[str, Any] = {}
    stack: list[tuple[str, Any]] = [(prefix, value)]
    while stack:
        here, v = stack.pop()
        if isinstance(v, dict) and v:
            for k, x in v.items():
                stack.append((f"{here}.{k}" if here else str(k), x))
        elif isinstance(v, list) and v:
            for i, x in enumerate(v):
                stack.append((f"{here}[{i}]", x))
        else:
            out[here] = v
    return out


def distance(a: dict[str, Any], b: dict[str, Any]) -> int:
    """How many leaves differ between two flattened requests."""
    return sum(1 for k in a.keys() | b.keys() if a.get(k, _NOT_JSON) != b.get(k, _NOT_JSON))


def _show(v: Any, n: int = 60) -> str:
    if v is _NOT_JSON:
        return "(absent)"
    text = json.dumps(v, ensure_ascii=False)
    return text if len(text) <= n else text[: n - 1] + "…"


def first_difference(sent: dict[str, Any], recorded: dict[str, Any]) -> str:
    """One line: the first path where ``sent`` differs from ``recorded``, both values shown."""
    a, b = leaves(sent), leaves(recorded)
    try:
        order = {k: i for i, k in enumerate(_ordered(recorded))}
        order.update({k: len(order) + i for i, k in enumerate(_ordered(sent)) if k not in order})
    except RecursionError:
        order = {}
    for key in sorted(a.keys() | b.keys(), key=lambda k: order.get(k, 1 << 30)):
        x, y = a.get(key, _NOT_JSON), b.get(key, _NOT_JSON)
        if x != y:
            return f"{key}: sent {_show(x)}, recorded {_show(y)}"
    return "no difference"


def _ordered(value: Any, prefix: str = "") -> list[str]:
    """The leaf paths of ``value`` in document order."""
    if isinstance(value, dict) and value:
        return [
            p for k, x in value.items() for p in _ordered(x, f"{prefix}.{k}" if prefix else str(k))
        ]
    if isinstance(value, list) and value:
        return [p for i, x in enumerate(value) for p in _ordered(x, f"{prefix}[{i}]")]
    return [prefix]
