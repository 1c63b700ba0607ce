"""Crash-injection harness: kill a run at every ledger offset, resume, check invariants."""

from lorch.crashtest.harness import (
    DEFAULT_MODES,
    INVARIANTS,
    MODES,
    Baseline,
    Options,
    Point,
    Result,
    crashtest,
    record_baseline,
)

__all__ = [
    "DEFAULT_MODES",
    "INVARIANTS",
    "MODES",
    "Baseline",
    "Options",
    "Point",
    "Result",
    "crashtest",
    "record_baseline",
]
