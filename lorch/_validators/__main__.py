"""Regenerate the fast validators from schemas/v1: ``python -m lorch._validators``."""

from lorch._validators.generate import write_generated

for path in write_generated():
    print(f"wrote {path}")
