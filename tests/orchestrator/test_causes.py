"""What an error event says becomes the failure line (pure: no processes)."""

from __future__ import annotations

from lorch.core.commands import CAUSE_LEN, error_cause


def test_message_error_details_and_place() -> None:
    assert error_cause({"message": "no network"}) == "no network"
    assert error_cause({"error": "compilation failed", "details": "undefined: f"}) == (
        "compilation failed (undefined: f)"
    )
    assert error_cause({"error": "x", "file": "src/a.py", "line": 3}) == "x at src/a.py:3"
    assert error_cause({"message": "a", "error": "a"}) == "a"
    assert error_cause({"message": "a", "error": "b"}) == "a; b"
    assert error_cause({"details": {"k": [1, 2]}}) == '{"k":[1,2]}'


def test_nothing_said_and_odd_payloads() -> None:
    assert error_cause({}) == "error event"
    assert error_cause({"code": "boom"}) == "error event"
    assert error_cause(None) == "error event"
    assert error_cause({"message": 5, "line": True, "file": ""}) == "error event"


def test_one_bounded_line() -> None:
    text = error_cause({"message": "line one\nline two\r\n\tthree", "details": "d" * 1000})
    assert "\n" not in text and "\r" not in text and "\t" not in text
    assert text.startswith("line one line two three (ddd")
    assert len(text) == CAUSE_LEN and text.endswith("…")
