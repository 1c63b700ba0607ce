"""mockagent: a scriptable mock agent for lorch (fixture-driven, durable idempotency)."""

__version__ = "0.1.0"
