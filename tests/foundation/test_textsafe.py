"""Agent text on a terminal: control characters shown, never interpreted."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lorch.wire.textsafe import visible

DANGEROUS = (
    {c for c in range(0x20) if c not in (0x09, 0x0A)}
    | set(range(0x7F, 0xA0))
    | set(range(0x202A, 0x202F))
    | set(range(0x2066, 0x206A))
)


def test_escape_sequences_are_shown() -> None:
    forged = "ok\r[lorch] DONE\x1b[2J\x1b]0;title\x07\x9b31m"
    assert visible(forged) == "ok\\x0d[lorch] DONE\\x1b[2J\\x1b]0;title\\x07\\x9b31m"


def test_bidi_overrides_are_shown() -> None:
    assert visible("a\u202eb\u2066c\u2069") == "a\\u202eb\\u2066c\\u2069"


def test_newline_tab_and_ordinary_text_kept() -> None:
    text = "line one\n\tline two — ünïcode 日本 \u200d"
    assert visible(text) == text


def test_nul_and_del() -> None:
    assert visible("\x00\x7f") == "\\x00\\x7f"


@given(st.text())
def test_nothing_dangerous_survives(text: str) -> None:
    out = visible(text)
    assert not any(ord(ch) in DANGEROUS for ch in out)
    if not any(ord(ch) in DANGEROUS for ch in text):
        assert out == text


def test_one_line_form_escapes_newlines_and_tabs() -> None:
    from lorch.wire.textsafe import visible_line

    assert visible_line("a\nb\tc\r\x1b") == "a\\nb\\tc\\x0d\\x1b"
