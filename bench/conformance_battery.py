"""The full required conformance battery against a correct mockagent. Goal: <= 10 s.

Run: python bench/conformance_battery.py
"""

from __future__ import annotations

import sys
from pathlib import Path

from lorch.conformance import run_battery

sys.path.insert(0, str(Path(__file__).parent))
from _bytecode import compile_packages


def main() -> None:
    compile_packages()
    report = run_battery([str(Path(sys.executable).parent / "mockagent"), "--type", "builder"])
    required = [o for o in report.outcomes if o.check.severity == "required"]
    print(
        f"{len(report.outcomes)} checks ({len(required)} required), conforms={report.passed}, "
        f"{report.seconds:.2f} s (goal <= 10 s)"
    )


if __name__ == "__main__":
    main()
