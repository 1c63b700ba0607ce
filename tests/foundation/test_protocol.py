"""NDJSON framing and message validation."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorch.wire import protocol, vocabulary
from lorch.wire.errors import BadEncoding, BadJSON, LineTooLong, SchemaError

MAX = vocabulary.MAX_LINE


def event(**over: object) -> dict[str, object]:
    e: dict[str, object] = {
        "kind": "event",
        "message_id": "evt-1",
        "correlation_id": "corr-T-0042-1",
        "task_id": "T-0042",
        "from": {"agent_type": "builder"},
        "event": "builder.completed",
        "status": "success",
        "payload": {"tests": {"status": "pass", "summary": "ok"}},
        "occurred_at": "2026-11-24T12:00:00Z",
    }
    e.update(over)
    return e


def test_encode_decode_round_trip() -> None:
    line = protocol.encode(event())
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    assert protocol.decode(line[:-1]) == event()


def test_line_limit_on_write_and_read() -> None:
    base = len(protocol.encode({"kind": "log", "pad": ""})) - 1
    exact = {"kind": "log", "pad": "x" * (MAX - base)}
    assert len(protocol.encode(exact)) == MAX + 1
    with pytest.raises(LineTooLong, match="262144"):
        protocol.encode({"kind": "log", "pad": "x" * (MAX - base + 1)})
    assert protocol.parse_line(b'{"a":"' + b"x" * (MAX - 8) + b'"}')["a"]
    with pytest.raises(LineTooLong) as err:
        protocol.parse_line(b'{"a":"' + b"x" * (MAX - 7) + b'"}')
    assert err.value.size == MAX + 1


@pytest.mark.parametrize(
    ("raw", "error", "text"),
    [
        (b"\xff\xfe{}", BadEncoding, "UTF-8"),
        (b"{not json", BadJSON, "not valid JSON"),
        (b"[1, 2]", BadJSON, "expected an object"),
    ],
)
def test_bad_lines(raw: bytes, error: type[Exception], text: str) -> None:
    with pytest.raises(error, match=text):
        protocol.parse_line(raw)


def test_schema_violation_names_the_json_path() -> None:
    with pytest.raises(SchemaError, match=r"\$\.from\.agent_type"):
        protocol.decode(protocol.encode(event(**{"from": {"agent_type": "wizard"}}))[:-1])
    with pytest.raises(SchemaError, match=r"\$\.kind"):
        protocol.validate_message({"kind": "telegram"})


def test_event_status_is_a_free_string() -> None:
    for status in ("success", "approved", "changes_requested", "failed", "anything"):
        protocol.validate_message(event(status=status))


def test_splits_only_on_newline() -> None:
    s = protocol.LineSplitter()
    payload = json.dumps(
        {"kind": "log", "message": "a\rb\u2028c\x85d"}, ensure_ascii=False
    ).encode()
    assert list(s.feed(payload + b"\n")) == [payload]


@given(
    st.lists(st.binary(max_size=50).map(lambda b: b.replace(b"\n", b"")), max_size=10), st.data()
)
def test_any_chunking_gives_the_same_lines(lines: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    s = protocol.LineSplitter()
    out: list[bytes] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        out.extend(x for x in s.feed(stream[prev:c]) if isinstance(x, bytes))
        prev = c
    assert out == lines


def test_endless_line_keeps_memory_bounded() -> None:
    s = protocol.LineSplitter(limit=1000)
    for _ in range(100):
        assert list(s.feed(b"x" * 500)) == []
    assert len(s.pending()) == 0
    items = list(s.feed(b"tail\nnext\n"))
    assert isinstance(items[0], LineTooLong) and items[0].size == 50_004
    assert items[1] == b"next"
