"""``policy.message_max_bytes``: a smaller line limit is honoured on the wire, both ways."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lorch.app.config import MESSAGE_MIN_BYTES

from .conftest import Runner, records

pytestmark = pytest.mark.e2e


def _limit(ws: Path, limit: int | None) -> None:
    cfg = json.loads((ws / "lorch.json").read_text())
    if limit is not None:
        cfg["policy"]["message_max_bytes"] = limit
    (ws / "lorch.json").write_text(json.dumps(cfg))


def _chatty_builder(ws: Path, size: int) -> None:
    """The builder says one progress line of about ``size`` bytes before it completes."""
    path = ws / "fixtures" / "builder.json"
    fx = json.loads(path.read_text())
    events = fx["responses"]["implement"]["events"]
    events.insert(0, {"type": "builder.progress", "payload": {"message": "x" * size}})
    path.unlink()
    path.write_text(json.dumps(fx))


def test_a_limit_within_bounds_is_honoured(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    _chatty_builder(ws, 20_000)
    _limit(ws, 20_000 - 1000)  # the progress line no longer fits
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 1, r.stdout + r.stderr
    errors = [x for x in records(ws) if x.get("event") == "system.protocol_error"]
    assert errors and all("exceeds the 19000-byte limit" in e["payload"]["reason"] for e in errors)
    started = next(x for x in records(ws) if x.get("event") == "system.run_started")
    assert started["payload"]["policy"]["message_max_bytes"] == 19_000

    ws2 = scenario("happy-path").parent / "ws2"
    ws.rename(ws2)
    ws = scenario("happy-path")
    _chatty_builder(ws, 20_000)
    _limit(ws, 20_000 + 1000)  # it fits: the run completes
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_limit_out_of_bounds_is_refused_in_one_line(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    _limit(ws, MESSAGE_MIN_BYTES - 1)
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "$.policy.message_max_bytes: 16383 is not supported" in (
        r.stderr
    )
    assert not (ws / "events").exists()
