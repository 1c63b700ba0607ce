"""Crash-injection harness: kill a run at every ledger offset, resume, check invariants."""

from lorch.crashtest.baseline import Baseline, record_baseline
from lorch.crashtest.harness import (
    DEFAULT_MODES,
    MODES,
    Options,
    Point,
    Result,
    crashtest,
)
from lorch.crashtest.verdict import INVARIANTS

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
