"""The v1 JSON Schemas, compiled once, and validation with JSON-path errors."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from lorch.errors import SchemaError
from lorch.resources import schema_path

NAMES = (
    "command",
    "event",
    "heartbeat",
    "log",
    "receipt",
    "run-state",
    "snapshot-manifest",
    "index",
    "config",
)


@cache
def load_schema(name: str) -> dict[str, Any]:
    if name not in NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(NAMES)}")
    with open(schema_path(name), encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


@cache
def validator(name: str) -> Draft202012Validator:
    """A compiled validator for ``name`` (built once per process)."""
    # The schemas themselves are checked by the test suite (check_schema is
    # slow, and every lorch process starts here).
    return Draft202012Validator(load_schema(name))


def json_path(error: ValidationError) -> str:
    path = "$"
    for part in error.absolute_path:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


def _best(errors: list[ValidationError]) -> ValidationError:
    # The deepest error names the field actually at fault, not the enclosing object.
    return max(errors, key=lambda e: (len(e.absolute_path), -len(str(e.message))))


def describe(error: ValidationError) -> str:
    found = error.instance
    text = json.dumps(found, ensure_ascii=False) if not isinstance(found, dict | list) else ""
    if error.validator == "additionalProperties" and isinstance(found, dict):
        return error.message
    if error.validator == "required":
        return error.message
    return (
        f"{error.message}"
        if not text or text in error.message
        else f"{error.message} (found {text})"
    )


def errors(name: str, instance: Any) -> list[tuple[str, str]]:
    """Every violation as (json_path, description), sorted by path."""
    found = sorted(validator(name).iter_errors(instance), key=lambda e: json_path(e))
    return [(json_path(e), describe(e)) for e in found]


def validate(name: str, instance: Any, *, source: str = "") -> None:
    """Raise :class:`SchemaError` naming the JSON path of the first mistake."""
    errs = list(validator(name).iter_errors(instance))
    if not errs:
        return
    e = _best(errs)
    where = f"{source}: " if source else ""
    raise SchemaError(
        f"{where}{json_path(e)}: {describe(e)} (schema {name})", schema=name, path=json_path(e)
    )


def is_valid(name: str, instance: Any) -> bool:
    return bool(validator(name).is_valid(instance))
