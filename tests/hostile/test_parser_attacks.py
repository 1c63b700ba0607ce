"""Lines no parser should choke on, from a real agent process (issue 14, point 1)."""

from __future__ import annotations

import pytest

from .conftest import (
    Workspace,
    assert_clean_exit,
    protocol_errors,
    records,
    run_ids,
    terminal_events,
)

pytestmark = pytest.mark.e2e

HAPPY = ["builder.completed", "review.completed:approved", "spec.no_changes_needed"]


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("deep_json", "more than 64 deep"),
        ("huge_exponent", "1e999999 overflows to infinity"),
        ("nan", "NaN is not JSON"),
        ("long_int", "integer of 5000 digits"),
        ("lone_surrogate", "lone UTF-16 surrogate"),
    ],
)
def test_a_line_that_crashed_the_parser_is_a_protocol_error(
    attack: str,
    reason: str,
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    ws = hostile_ws({"builder": attack})
    r = lorch("run", "--workspace", str(ws))
    assert_clean_exit(r)
    errors = protocol_errors(ws)
    assert len(errors) == 1 and errors[0]["role"] == "builder", errors
    assert reason in errors[0]["reason"]
    assert len(errors[0]["prefix"]) <= 80
    assert terminal_events(ws) == HAPPY
    failed = [r for r in records(ws) if r.get("event") == "system.command_failed"]
    assert [f["payload"]["code"] for f in failed] == ["protocol_error"]
    # The same key was sent again, and resume finds nothing left to do.
    implements = [r for r in records(ws) if r.get("action") == "implement"]
    assert len({c["idempotency_key"] for c in implements}) == 1 and len(implements) == 2
    assert lorch("verify", "--workspace", str(ws), "--run", run_ids(ws)[0]).returncode == 0
    again = lorch("resume", "--workspace", str(ws))
    assert_clean_exit(again)
    assert "already completed" in again.stdout


def test_malformed_system_events_do_not_break_lorch(hostile_ws: Workspace, lorch) -> None:  # type: ignore[no-untyped-def]
    ws = hostile_ws({"builder": "bad_system"}, builder={"timeouts_s": {"implement": 5}})
    r = lorch("run", "--workspace", str(ws))
    assert_clean_exit(r)
    assert terminal_events(ws) == HAPPY
    assert lorch("resume", "--workspace", str(ws)).returncode == 0
