"""Canonical JSON and idempotency keys (DESIGN.md §5.4).

Canonical JSON: keys sorted, no insignificant whitespace, UTF-8 (non-ASCII kept as
is), floats in Python's shortest round-trip form. NaN and infinities are refused:
they have no JSON spelling, so no two implementations could agree on them.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """The one canonical text of ``value``."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def canonical_bytes(value: Any) -> bytes:
    return canonical_json(value).encode("utf-8")


def digest(value: Any) -> str:
    """``sha256:<hex>`` of the canonical JSON of ``value``."""
    return "sha256:" + hashlib.sha256(canonical_bytes(value)).hexdigest()


def idempotency_key(
    action: str,
    task_id: str,
    snapshot_id: str,
    inputs: Any,
    expected_outputs: Any,
) -> str:
    """``ik:`` + sha256 of the five fields joined by newlines.

    The inputs of every loop command carry its round and the digest of what it
    answers, so each round gets its own key while a resend gets the same one.
    """
    material = "\n".join(
        (action, task_id, snapshot_id, canonical_json(inputs), canonical_json(expected_outputs))
    )
    return "ik:" + hashlib.sha256(material.encode("utf-8")).hexdigest()
