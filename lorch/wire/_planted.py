"""Deliberate bugs, switched on only by tests (docs/decisions.md D7).

``LORCH_PLANT_BUG=name[,name…]`` enables them; they exist so that tests can show
the crash harness catches each class of mistake. Nothing in ``lorch.json`` can
switch them on.
"""

from __future__ import annotations

import os

ENV = "LORCH_PLANT_BUG"
BUGS = frozenset(
    {
        "new_key_on_resend",
        "skip_command_fsync",
        "receipt_before_ledger",
        "no_torn_cut",
        "no_orphan_kill",
        # Caught only by crash states derived from the system calls (powercut):
        "ledger_fsync_skipped",  # the ledger's fsync left out, its "synced" count kept
        "no_dir_fsync",  # atomic files: no fsync of the directory after rename or link
        "reask_on_resume",
    }
)


def enabled(name: str) -> bool:
    assert name in BUGS, name
    value = os.environ.get(ENV, "")
    return name in value.split(",")
