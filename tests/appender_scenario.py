"""A scenario run entirely by tests/agents/appender.py (agents that are not idempotent)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

APPENDER = str(Path(__file__).parent / "agents" / "appender.py")


def scenario(root: Path, idempotency: str, **builder_env: str) -> Path:
    """A review loop (one round of changes) run entirely by appender agents."""
    d = root / f"exactly-once-{idempotency}{'-' if builder_env else ''}{'-'.join(builder_env)}"
    (d / "specs").mkdir(parents=True, exist_ok=True)
    (d / "specs" / "SPEC.md").write_text("# Spec\n\nAppend, never cache.\n")

    def role(name: str, **env: str) -> dict[str, object]:
        cfg: dict[str, object] = {
            "cmd": [sys.executable, APPENDER, name],
            "idempotency": idempotency,
        }
        if env:
            cfg["env"] = env
        return cfg

    config = {
        "version": "1",
        "task": {"id": "T-0007", "goal": "append", "spec_path": "specs/SPEC.md"},
        "agents": {
            "builder": role("builder", **builder_env),
            "reviewer": role("reviewer", APPENDER_CHANGES="1"),
            "spec_maintainer": role("spec_maintainer"),
        },
        "policy": {"backoff": {"initial_s": 0.02, "factor": 2, "max_s": 0.2}},
    }
    (d / "lorch.json").write_text(json.dumps(config, indent=2))
    meta = {
        "description": "Non-idempotent agents; each command appends its key to effects.log.",
        "task_id": "T-0007",
        "expected": {"status": "completed"},
        "effects_log": "effects.log",
    }
    (d / "scenario.json").write_text(json.dumps(meta, indent=2))
    return d
