"""The pure reducer: the state of a run folded from its ledger, and the next step.

Workflow, build loop, intake decisions, commands, run policy. No I/O, no clock,
no configuration: it may import only ``lorch.wire``.
"""
