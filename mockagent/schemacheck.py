"""Is this document valid? Answered by code generated from the schema files.

mockagent checks every command and its fixture against the v1 schemas. Importing
``jsonschema`` and compiling a validator costs tens of milliseconds, at every
start of every agent; the generated validators in ``mockagent/_validators``
(made by fastjsonschema from the same schema files, kept current by a test)
answer in microseconds. ``jsonschema`` is loaded only to explain a rejection,
and each validator on its first use.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any


class JsonSchemaException(ValueError):
    pass


class JsonSchemaValueException(JsonSchemaException):
    # The signature the generated code calls.
    def __init__(
        self,
        message: str,
        value: object = None,
        name: str | None = None,
        definition: object = None,
        rule: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.rule = rule


class JsonSchemaValuesException(JsonSchemaException):
    def __init__(self, errors: list[JsonSchemaValueException]) -> None:
        super().__init__(f"{len(errors)} validation errors")
        self.errors = errors


_checks: dict[str, Callable[[Any], object]] = {}


def _check(name: str) -> Callable[[Any], object]:
    if name == "command":
        from mockagent._validators.command import validate
    elif name == "fixture":
        from mockagent._validators.fixture import validate
    else:
        raise ValueError(f"mockagent has no validator for {name!r}")
    _checks[name] = validate
    return validate


def is_valid(name: str, instance: Any) -> bool:
    """True when ``instance`` is valid against schemas/v1/<name>.v1.json."""
    check = _checks.get(name) or _check(name)
    try:
        check(instance)
    except JsonSchemaException:
        return False
    return True


_validator: Any = None


def schema_problem(cmd: dict[str, Any]) -> str | None:
    """The first way ``cmd`` breaks the command schema (compiled on first use)."""
    if is_valid("command", cmd):
        return None
    global _validator
    if _validator is None:
        import json

        from jsonschema import Draft202012Validator

        from mockagent.fixture import schema_file

        _validator = Draft202012Validator(json.loads(schema_file("command").read_text()))
    for err in _validator.iter_errors(cmd):
        where = "$" + "".join(
            f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path
        )
        return f"{where}: {err.message[:200]}"
    return None
