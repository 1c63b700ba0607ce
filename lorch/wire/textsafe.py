"""Agent-controlled text made safe to print on a terminal.

An agent's stderr, an error message it sends, the name it gives itself: any of
them may carry ESC sequences (clear the screen, set the window title, move the
cursor over a line lorch printed), a ``\\r`` that overwrites a line, or a
bidirectional override that shows text in another order than it is. ``visible``
writes every such character as an escape (``\\x1b``, ``\\u202e``) so it is seen,
never interpreted.
"""

from __future__ import annotations

# C0 controls except \t and \n, DEL, C1 controls, and the bidi embeddings,
# overrides and isolates (U+202A–U+202E, U+2066–U+2069).
_CODES = (
    [c for c in range(0x20) if c not in (0x09, 0x0A)]
    + list(range(0x7F, 0xA0))
    + list(range(0x202A, 0x202F))
    + list(range(0x2066, 0x206A))
)
_TABLE = {c: (f"\\x{c:02x}" if c <= 0xFF else f"\\u{c:04x}") for c in _CODES}


def visible(text: str) -> str:
    """``text`` with every control character and bidi override escaped.

    ``\\n`` and ``\\t`` are kept (a multi-line display stays multi-line); a
    caller printing one line escapes or splits on ``\\n`` itself.
    """
    return text.translate(_TABLE)


def visible_line(text: str) -> str:
    """``text`` as one line: as :func:`visible`, with newlines and tabs escaped too."""
    return visible(text).replace("\n", "\\n").replace("\t", "\\t")
