"""Shared by the orchestrator benchmarks: a workspace whose reviewer asks for changes N times."""

from __future__ import annotations

import json
import sys
from pathlib import Path

MOCK = str(Path(sys.executable).parent / "mockagent")


def loop_workspace(ws: Path, rounds: int) -> None:
    ws.mkdir(parents=True, exist_ok=True)
    hb = ["--heartbeat-interval", "30"]
    cfg = {
        "version": "1",
        "task": {"id": "T-0042"},
        "agents": {
            "builder": {"cmd": [MOCK, "--type", "builder", *hb]},
            "reviewer": {
                "cmd": [MOCK, "--type", "reviewer", "--review-changes-count", str(rounds), *hb]
            },
            "spec_maintainer": {"cmd": [MOCK, "--type", "spec_maintainer", *hb]},
        },
        "policy": {"max_rounds": rounds + 1, "heartbeat_interval_s": 30},
    }
    (ws / "lorch.json").write_text(json.dumps(cfg))
