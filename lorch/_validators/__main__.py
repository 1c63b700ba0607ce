"""Regenerate the fast validators from schemas/v1: ``python -m lorch._validators``."""

from lorch.schemas import write_generated

for path in write_generated():
    print(f"wrote {path}")
