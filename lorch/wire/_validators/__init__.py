"""Validators generated from schemas/v1 (see lorch/wire/schemas.py)."""
