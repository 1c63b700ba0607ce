"""Regenerate the fast validators from schemas/v1: ``python -m lorch.wire._validators``."""

from lorch.wire._validators.generate import write_generated

for path in write_generated():
    print(f"wrote {path}")
