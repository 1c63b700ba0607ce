"""What lorch keeps on disk, and how it stays whole through a crash.

Atomic files, the ledger, snapshots, receipts and run state, the checkpoint
store, the workspace lock, path confinement. May import ``lorch.core`` and
``lorch.wire``.
"""
