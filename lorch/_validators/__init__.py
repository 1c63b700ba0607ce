"""Validators generated from schemas/v1 (see lorch/schemas.py)."""
