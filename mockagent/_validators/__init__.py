"""Validators generated from schemas/v1 by `python -m lorch._validators` (do not edit)."""
