"""Redaction that cannot be bypassed (issue 14, point 4): decoded, cut, straddled."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from lorch.wire import protocol, vocabulary
from lorch.wire.redact import MASK, Redactor, secret_values

SECRET = "hunter2-Swordfish-9f8e7d"
R = Redactor([SECRET])


def test_secret_names() -> None:
    env = {
        "GH_TOKEN": "tok-aaaa",
        "API_KEY": "key-bbbb",
        "X_SECRET": "sec-cccc",
        "DB_PASSWORD": "pw-dddd",
        "db_password": "pw-eeee",
        "SHORT_TOKEN": "abc",
        "HOME": "/root",
        "KEYBOARD": "us",
    }
    assert set(secret_values(env)) == {"tok-aaaa", "key-bbbb", "sec-cccc", "pw-dddd", "pw-eeee"}
    assert secret_values({"A_TOKEN": "xxxx"}, {"B_KEY": "yyyyy"}) == ["yyyyy", "xxxx"]


def test_decoded_values_are_redacted_keys_too() -> None:
    value = {"a": [SECRET, {"x": f"pre{SECRET}post"}], SECRET: 1, "n": 3}
    assert R.value(value) == {"a": [MASK, {"x": f"pre{MASK}post"}], MASK: 1, "n": 3}


def test_a_json_escaped_secret_is_redacted_after_decoding() -> None:
    escaped = "".join(f"\\u{ord(c):04x}" for c in SECRET)
    line = (
        '{"kind":"log","level":"info","message":"' + escaped + '",'
        '"timestamp":"2026-12-01T00:00:00Z"}'
    ).encode()
    assert SECRET.encode() not in line
    message = protocol.read_message(line, R)
    assert isinstance(message, dict) and message["message"] == MASK
    # A bad line with the escaped secret: its prefix is decoded before redaction.
    bad = protocol.read_message(b'{"message":"' + escaped.encode() + b'", oops', R)
    assert isinstance(bad, protocol.ProtocolError)
    assert SECRET not in bad.payload("builder", R)["prefix"]


def test_a_secret_straddling_the_prefix_cut_shows_none_of_it() -> None:
    for at in range(protocol.PREFIX_LEN - len(SECRET) - 2, protocol.PREFIX_LEN + 2):
        line = b"x" * at + SECRET.encode() + b" tail, not JSON"
        shown = protocol.read_message(line, R)
        assert isinstance(shown, protocol.ProtocolError)
        prefix = shown.payload("builder", R)["prefix"]
        visible = prefix.replace(MASK, "")
        assert not any(SECRET[:k] in visible[at:] for k in range(1, len(SECRET))), prefix
        assert len(prefix) <= protocol.PREFIX_LEN


def test_a_secret_cut_by_the_line_limit_shows_none_of_it() -> None:
    splitter = protocol.LineSplitter()
    line = b"y" * 78 + SECRET.encode() + b"z" * (vocabulary.MAX_LINE + 10)
    (item,) = list(splitter.feed(line + b"\n"))
    assert isinstance(item, protocol.LineTooLong)
    error = protocol.ProtocolError.of(item, b"")
    payload = error.payload("builder", R)
    assert payload["size"] == len(line)
    assert payload["prefix"].startswith("y" * 78)
    assert set(payload["prefix"][78:]) <= {"*"}


def test_a_reason_quoting_the_line_is_redacted_and_bounded() -> None:
    event = {
        "kind": "event",
        "message_id": "e",
        "correlation_id": "c",
        "task_id": "T-1",
        "from": {"agent_type": "wizard " + SECRET * 100},
        "event": "builder.completed",
        "occurred_at": "2026-12-01T00:00:00Z",
    }
    error = protocol.read_message(json.dumps(event).encode())  # no redactor: raw reason
    assert isinstance(error, protocol.ProtocolError)
    payload = error.payload("builder", R)
    assert SECRET not in payload["reason"] and len(payload["reason"]) <= protocol.REASON_LEN + 3


def test_terminal_control_characters_are_shown_escaped() -> None:
    shown = protocol.safe_prefix(b"\x1b[2J\x1b]0;pwned\x07 hi", whole=True)
    assert "\x1b" not in shown and "\x07" not in shown and "\\x1b[2J" in shown


@given(st.text(max_size=120), st.integers(0, 200), st.booleans())
def test_cut_never_shows_a_secret_piece_at_the_cut(text: str, n: int, whole: bool) -> None:
    s = (text + SECRET + text)[: n + 5]
    out = R.cut(s, n, whole=whole)
    assert SECRET not in out
    if len(R.text(s)) > n or not whole:
        tail = out[-len(SECRET) :]
        assert not any(tail.endswith(SECRET[:k]) for k in range(1, len(SECRET)))


def test_a_secret_is_found_in_its_json_escaped_forms_too() -> None:
    quoted = 'pa"ss\\word-\x01-é-value'
    r = Redactor([quoted])
    for form in (json.dumps(quoted)[1:-1], json.dumps(quoted, ensure_ascii=False)[1:-1]):
        assert r.text(f"x{form}y") == f"x{MASK}y"
        assert r.raw(f"x{form}y".encode()) == f"x{MASK}y".encode()


@given(st.text(max_size=120), st.integers(0, 200))
def test_tail_never_shows_a_secret_piece_at_the_cut(text: str, n: int) -> None:
    s = (text + SECRET + text)[-(n + 5) :]
    out = R.tail(s, n)
    assert SECRET not in out
    if len(R.text(s)) > n:
        head = out[: len(SECRET)]
        assert not any(head.startswith(SECRET[-k:]) for k in range(1, len(SECRET)))


def test_secret_start_and_end_measure_the_pieces_at_the_edges() -> None:
    assert R.secret_start("abc " + SECRET[:7]) == 7
    assert R.secret_start("abc") == 0
    assert R.secret_end(SECRET[-5:] + " abc") == 5
