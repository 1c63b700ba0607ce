"""The v1 JSON Schemas, compiled once, and validation with JSON-path errors.

Two engines check the same schema files. ``jsonschema`` is the reference: it
names the JSON path of a mistake. It is slow to import and to run, so the hot
path (every message, every receipt) first asks a validator that
``fastjsonschema`` generated from the same schema ahead of time
(``lorch/wire/_validators/``, rebuilt with ``python -m lorch.wire._validators``);
only a message it rejects is handed to ``jsonschema`` for the explanation. A
test keeps the generated code in step with the schemas and checks that both
engines agree on valid and broken instances (docs/decisions.md, D14).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

from lorch.wire.errors import JsonSchemaException, SchemaError
from lorch.wire.resources import schema_path

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
    "review-verdict",
    "spec-notes-verdict",
)


@cache
def load_schema(name: str) -> dict[str, Any]:
    if name not in NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(NAMES)}")
    with open(schema_path(name), encoding="utf-8") as f:
        schema: dict[str, Any] = json.load(f)
    return schema


if TYPE_CHECKING:
    from jsonschema import Draft202012Validator
    from jsonschema.exceptions import ValidationError


@cache
def validator(name: str) -> Draft202012Validator:
    """The reference validator for ``name`` (built once per process)."""
    from jsonschema import Draft202012Validator

    # The schemas themselves are checked by the test suite (check_schema is
    # slow, and every lorch process starts here).
    return Draft202012Validator(load_schema(name))


def _module_name(name: str) -> str:
    return "lorch.wire._validators." + name.replace("-", "_")


@cache
def fast(name: str) -> Callable[[Any], bool]:
    """The generated validator for ``name``: True when the instance is valid."""
    if name not in NAMES:
        raise KeyError(f"unknown schema {name!r}; known: {', '.join(NAMES)}")
    module = importlib.import_module(_module_name(name))
    check = module.validate

    def is_valid(instance: Any) -> bool:
        try:
            check(instance)
        except JsonSchemaException:
            return False
        return True

    return is_valid


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
    if error.validator == "not" and error.validator_value == {} and isinstance(error.schema, dict):
        # A field forbidden in this context says why in its schema's description.
        return str(error.schema.get("description") or "not allowed here")
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
    if fast(name)(instance):
        return
    errs = list(validator(name).iter_errors(instance))
    if not errs:
        return  # the reference engine has the last word
    e = _best(errs)
    where = f"{source}: " if source else ""
    raise SchemaError(
        f"{where}{json_path(e)}: {describe(e)} (schema {name})", schema=name, path=json_path(e)
    )


def is_valid(name: str, instance: Any) -> bool:
    return fast(name)(instance) or bool(validator(name).is_valid(instance))
