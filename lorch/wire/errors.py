"""The exception tree of lorch.

Every error a user can cause is a :class:`LorchError` carrying its exit code; the
CLI turns it into one line on stderr (``cli.main`` is the only place that does).

    LorchError                      exit 1 unless the subclass says otherwise
    ├── UsageError                  exit 2: bad arguments, unknown run or scenario
    ├── ConfigError                 exit 2: lorch.json missing fields, bad values
    ├── SchemaError                 a document does not match its JSON Schema
    ├── FramingError                bytes that are not one valid NDJSON line
    │   ├── LineTooLong
    │   └── BadEncoding / BadJSON
    ├── LedgerError                 a ledger line that cannot be read (not a torn tail)
    ├── PathEscape                  a path outside the workspace
    ├── StorageError                disk full, unwritable directory, fsync failure
    ├── AgentError                  an agent could not be started or failed for good
    │   ├── AgentStartError         exit 2: the agent under test cannot run at all
    │   ├── AgentNotReady           exit 2: a role failed its start-up check (resumable once fixed)
    │   └── AuthRequired            exit 2: the agent needs credentials (resumable once set)
    └── Interrupted                 exit 130: Ctrl-C; agents stopped, the run resumable
"""

from __future__ import annotations


class LorchError(Exception):
    """Root of every error lorch raises on purpose."""

    exit_code = 1


class UsageError(LorchError):
    exit_code = 2


class ConfigError(LorchError):
    exit_code = 2


class SchemaError(LorchError):
    """An instance failed its schema; ``path`` is the JSON path of the first mistake."""

    def __init__(self, message: str, *, schema: str = "", path: str = "$") -> None:
        super().__init__(message)
        self.schema = schema
        self.path = path


class FramingError(LorchError):
    """A line that is not a single valid NDJSON message.

    ``prefix``: its first bytes, to show; ``window``: more of them, so that a
    secret the prefix cuts through can still be recognised and masked.
    """

    def __init__(
        self, message: str, *, size: int = 0, prefix: bytes = b"", window: bytes = b""
    ) -> None:
        super().__init__(message)
        self.size = size
        self.prefix = prefix
        self.window = window or prefix


class LineTooLong(FramingError):
    pass


class BadEncoding(FramingError):
    pass


class BadJSON(FramingError):
    pass


class LedgerError(LorchError):
    pass


class PathEscape(LorchError):
    pass


class StorageError(LorchError):
    pass


class AgentError(LorchError):
    pass


class AgentStartError(AgentError):
    exit_code = 2


class AgentNotReady(AgentError):
    """A configured role could not start or failed its start-up check: no agent
    got a command, and the run resumes once the agent is fixed."""

    exit_code = 2


class AuthRequired(AgentError):
    """An agent answered that it needs authentication: retrying cannot help."""

    exit_code = 2


class Interrupted(LorchError):
    """Ctrl-C: agents were stopped and the run can be resumed."""

    exit_code = 130


# Raised by the validators generated from the schemas (lorch/wire/_validators/); the
# names and arguments are the ones the generated code uses.
class JsonSchemaException(ValueError):
    pass


class JsonSchemaValueException(JsonSchemaException):
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
        self.value = value
        self.name = name
        self.definition = definition
        self.rule = rule


class JsonSchemaValuesException(JsonSchemaException):
    def __init__(self, errors: list[JsonSchemaValueException]) -> None:
        super().__init__(f"{len(errors)} validation errors")
        self.errors = errors
