"""Conformance kit: is an agent protocol-correct and safe to resume?"""

from lorch.conformance.checks import CHECKS
from lorch.conformance.kit import Report, run_battery
from lorch.conformance.session import CheckOutcome, ConformanceCheck, Verdict

__all__ = ["CHECKS", "CheckOutcome", "ConformanceCheck", "Report", "Verdict", "run_battery"]
