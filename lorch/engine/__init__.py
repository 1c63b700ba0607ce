"""The engine: one loop that asks the reducer, sends, waits and records.

Engine, recorder, roster, timing, provenance, turn checkpoints, derived files,
the transcript, intake's side effects. May import every layer below
(``agents``, ``store``, ``core``, ``wire``), never ``lorch.app``.
"""
