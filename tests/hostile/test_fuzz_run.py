"""Fuzzed lines through a real lorch run (issue 14, point 1): whatever a builder
prints, lorch ends with exit 0, 1 or 2, one line of error at most, no
traceback, and a ledger that replays."""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorch.store import ledger
from lorch.wire import protocol
from tests.conftest import examples
from tests.foundation.test_total_parser import events, lines_of, mutations

from .conftest import AGENT, ROLES

pytestmark = pytest.mark.e2e

seen = {"runs": 0, "lines": 0, "exits": {}}  # figures for the record (pytest -s)


def fuzz_run(tmp: Path, lorch, lines: list[bytes], always: bool) -> None:  # type: ignore[no-untyped-def]
    seen["runs"] += 1
    ws = tmp / f"ws-{seen['runs']}"
    ws.mkdir()
    (tmp / f"lines-{seen['runs']}").write_bytes(b"\n".join(lines))
    agents = {
        role: {
            "cmd": [sys.executable, AGENT, role, "fuzz" if role == "builder" else "none"],
            "heartbeat_interval_s": 0.5,
        }
        for role in ROLES
    }
    agents["builder"]["timeouts_s"] = {"implement": 5}
    cfg: dict[str, Any] = {
        "version": "1",
        "task": {"id": "T-0042"},
        "agents": agents,
        "policy": {"max_attempts": 2, "backoff": {"initial_s": 0.01, "max_s": 0.02}},
    }
    (ws / "lorch.json").write_text(json.dumps(cfg))
    env = {"HOSTILE_LINES": str(tmp / f"lines-{seen['runs']}")}
    if always:
        env["HOSTILE_ALWAYS"] = "1"
    r = lorch("run", "--workspace", str(ws), env=env, timeout=90)
    seen["lines"] += len(lines)
    seen["exits"][r.returncode] = seen["exits"].get(r.returncode, 0) + 1  # type: ignore[attr-defined]
    assert r.returncode in (0, 1, 2), r.stderr
    assert "Traceback" not in r.stderr + r.stdout, r.stderr
    assert len(r.stderr.strip().splitlines()) <= 1, r.stderr
    for path in (ws / "events").glob("*.ndjson"):
        for record in ledger.read(path, allow_torn=False):  # every record valid
            assert protocol.validate_message(record) in ("command", "event")
    again = lorch("resume", "--workspace", str(ws), env=env, timeout=90)
    assert again.returncode in (0, 1, 2) and "Traceback" not in again.stderr, again.stderr


def lines_for(event: dict[str, Any], ops: list[tuple[str, int, bytes]], seed: int) -> list[bytes]:
    lines = lines_of(event, ops, seed)
    rng = random.Random(seed)
    rng.shuffle(lines)
    return lines


@pytest.mark.parametrize("always", [False, True], ids=["once", "every-attempt"])
def test_fuzzed_builder_lines_in_a_real_run(always: bool, tmp_path: Path, lorch) -> None:  # type: ignore[no-untyped-def]
    @settings(
        max_examples=examples(4),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(events, mutations, st.integers(0, 2**32))
    def one(event: dict[str, Any], ops: list[tuple[str, int, bytes]], seed: int) -> None:
        fuzz_run(tmp_path, lorch, lines_for(event, ops, seed), always)

    one()
    print(f"\nfuzz runs: {seen}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_many_fuzzed_runs(tmp_path: Path, lorch) -> None:  # type: ignore[no-untyped-def]
    @settings(
        max_examples=examples(40),
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(events, mutations, st.integers(0, 2**32), st.booleans())
    def one(
        event: dict[str, Any], ops: list[tuple[str, int, bytes]], seed: int, always: bool
    ) -> None:
        fuzz_run(tmp_path, lorch, lines_for(event, ops, seed), always)

    one()
    print(f"\nfuzz runs: {seen}")
