"""Invariant ``effects_once``: each command's effect is in the final workspace exactly once.

A scenario opts in with ``"effects_log": "<path>"`` in its scenario.json: a file
in the workspace to which its agents append one line per command they execute,
starting with the command's idempotency key. After a crashed and resumed run,
every key the ledger sent must appear there exactly once: a key missing is a
lost effect, a key twice is work done twice that nothing rolled back.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any


def effects_problem(ws: Path, records: list[dict[str, Any]], log: str) -> str | None:
    """What breaks the invariant (one line), or None when every effect is there once."""
    try:
        lines = (ws / log).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        return f"{log}: cannot read it: {e.strerror}"
    seen = collections.Counter(line.split(" ", 1)[0] for line in lines if line)
    sent = {str(r["idempotency_key"]) for r in records if r.get("kind") == "command"}
    for key in sorted(sent):
        if seen[key] != 1:
            return f"{log}: the effect of {key[:19]}… is there {seen[key]} times, expected once"
    strays = sorted(set(seen) - sent)
    if strays:
        return f"{log}: an effect of {strays[0][:19]}…, a key the ledger never sent"
    return None
