"""Conformance kit: is an agent protocol-correct and safe to resume?"""

from lorch.conformance.checks import CHECKS, Check, Outcome, Verdict
from lorch.conformance.kit import Report, run_battery

__all__ = ["CHECKS", "Check", "Outcome", "Report", "Verdict", "run_battery"]
