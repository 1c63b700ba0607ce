"""Conformance kit: is an agent protocol-correct and safe to resume?"""

from lorch.conformance.checks import CHECKS, CheckOutcome, ConformanceCheck, Verdict
from lorch.conformance.kit import Report, run_battery

__all__ = ["CHECKS", "CheckOutcome", "ConformanceCheck", "Report", "Verdict", "run_battery"]
