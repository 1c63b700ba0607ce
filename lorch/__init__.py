"""lorch: a local orchestrator for AI coding agents, with durable, resumable runs."""

from lorch.canonical import canonical_json, digest, idempotency_key
from lorch.checksum import sha256_bytes, sha256_file
from lorch.errors import (
    ConfigError,
    FramingError,
    LedgerError,
    LorchError,
    PathEscape,
    SchemaError,
    StorageError,
    UsageError,
)
from lorch.ledger import Ledger

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "FramingError",
    "Ledger",
    "LedgerError",
    "LorchError",
    "PathEscape",
    "SchemaError",
    "StorageError",
    "UsageError",
    "__version__",
    "canonical_json",
    "digest",
    "idempotency_key",
    "sha256_bytes",
    "sha256_file",
]
