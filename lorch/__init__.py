"""lorch: a local orchestrator for AI coding agents, with durable, resumable runs.

The public API is the names in ``__all__``; each is imported on first use, so
``import lorch`` (and the pytest plugin) stays light. The layers are
subpackages (docs/architecture.md): ``wire``, ``core``, ``store``, ``agents``,
``engine``, ``app``; the tools are ``crashtest``, ``conformance`` and ``testing``.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# Public name -> the module that defines it.
_PUBLIC = {
    "ConfigError": "lorch.wire.errors",
    "FramingError": "lorch.wire.errors",
    "LedgerError": "lorch.wire.errors",
    "LorchError": "lorch.wire.errors",
    "PathEscape": "lorch.wire.errors",
    "SchemaError": "lorch.wire.errors",
    "StorageError": "lorch.wire.errors",
    "UsageError": "lorch.wire.errors",
    "Ledger": "lorch.store.ledger",
    "canonical_json": "lorch.wire.canonical",
    "digest": "lorch.wire.canonical",
    "idempotency_key": "lorch.wire.canonical",
    "sha256_bytes": "lorch.wire.checksum",
    "sha256_file": "lorch.wire.checksum",
}

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

if TYPE_CHECKING:
    from lorch.store.ledger import Ledger
    from lorch.wire.canonical import canonical_json, digest, idempotency_key
    from lorch.wire.checksum import sha256_bytes, sha256_file
    from lorch.wire.errors import (
        ConfigError,
        FramingError,
        LedgerError,
        LorchError,
        PathEscape,
        SchemaError,
        StorageError,
        UsageError,
    )


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'lorch' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})
