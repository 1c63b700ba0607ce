"""Validators generated from schemas/v1 by `python -m lorch.wire._validators` (do not edit)."""
