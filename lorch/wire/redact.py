"""Secret values never leave lorch (DESIGN.md §5.9, §5.4 of issue 14).

A secret is the value of a variable named ``*_TOKEN``, ``*_KEY``, ``*_SECRET``
or ``*_PASSWORD``, in lorch's environment or in any ``agents.<role>.env``.
Redaction works on decoded text: an agent's line is redacted after its JSON is
decoded (so ``"\\u0073ecret"`` is seen as ``secret``), and a string lorch cuts
(a protocol-error prefix, a stderr tail) is redacted, then cut, then stripped
of a trailing piece that could be the start of a secret the cut went through
(or, cut from the left, a leading piece that could be its end). Text that is
still encoded (a JSON string's inside, quotes and backslashes escaped) is
caught too: each secret is also looked for in its JSON-escaped forms.
"""

from __future__ import annotations

import contextlib
import json
import re
from typing import Any

SECRET_SUFFIXES = ("_TOKEN", "_KEY", "_SECRET", "_PASSWORD")
# Shorter values would mask ordinary words everywhere (docs/decisions.md).
MIN_SECRET = 4
MASK = "***"


def secret_values(*envs: dict[str, str]) -> list[str]:
    """Values of the secret-named variables of ``envs``, longest first."""
    out = set()
    for env in envs:
        for k, v in env.items():
            if k.upper().endswith(SECRET_SUFFIXES) and isinstance(v, str) and len(v) >= MIN_SECRET:
                out.add(v)
    return sorted(out, key=len, reverse=True)


class Redactor:
    """Masks every secret value in text, bytes and decoded JSON values."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = sorted(set(secrets), key=len, reverse=True)
        # Each secret as it is, and as it reads inside an encoded JSON string.
        self._forms = sorted({f for s in self.secrets for f in _forms(s)}, key=len, reverse=True)
        self._bytes = sorted({_encode(f) for f in self._forms}, key=len, reverse=True)
        self._pattern = (
            re.compile("|".join(re.escape(s) for s in self._forms)) if self._forms else None
        )

    def text(self, s: str) -> str:
        if self._pattern is None:
            return s
        return self._pattern.sub(MASK, s)

    def raw(self, b: bytes) -> bytes:
        for v in self._bytes:
            b = b.replace(v, MASK.encode())
        return b

    def value(self, v: Any) -> Any:
        """A decoded JSON value with every string (object keys too) redacted."""
        if self._pattern is None:
            return v
        if isinstance(v, str):
            return self.text(v)
        if isinstance(v, dict):
            return {self.text(str(k)): self.value(x) for k, x in v.items()}
        if isinstance(v, list):
            return [self.value(x) for x in v]
        return v

    def cut(self, s: str, n: int, *, whole: bool = True) -> str:
        """The first ``n`` characters of ``s``, redacted, safe at the cut.

        ``whole``: ``s`` is all there was (False: it is itself a cut of longer
        text, so its end is a cut too). Where the text is cut, a trailing piece
        that is the beginning of a secret is masked: the rest of that secret
        was on the other side of the cut, where redaction could not see it.
        """
        s = self.text(s)
        if len(s) <= n and whole:
            return s
        s = s[:n]
        k = self.secret_start(s)
        return s[: len(s) - k] + MASK if k else s

    def tail(self, s: str, n: int) -> str:
        """The last ``n`` characters of ``s``, redacted, safe at the cut.

        The mirror of :meth:`cut`: a leading piece that is the end of a secret
        (whose beginning the cut took away) is masked.
        """
        s = self.text(s)
        if len(s) <= n:
            return s
        s = s[len(s) - n :]
        k = self.secret_end(s)
        return MASK + s[k:] if k else s

    def secret_start(self, s: str) -> int:
        """The length of the longest trailing piece of ``s`` that begins a secret
        (in any of its forms) without being all of it: text that may go on with
        the rest of the secret, so it may not be shown on its own."""
        longest = 0
        for form in self._forms:
            for k in range(min(len(form) - 1, len(s)), longest, -1):
                if s.endswith(form[:k]):
                    longest = k
                    break
        return longest

    def secret_end(self, s: str) -> int:
        """The length of the longest leading piece of ``s`` that ends a secret
        without being all of it (text that may follow the secret's beginning)."""
        longest = 0
        for form in self._forms:
            for k in range(min(len(form) - 1, len(s)), longest, -1):
                if s.startswith(form[len(form) - k :]):
                    longest = k
                    break
        return longest


def _forms(secret: str) -> set[str]:
    """``secret`` and its JSON-escaped forms (quotes, backslashes, controls, non-ASCII)."""
    forms = {secret}
    for ascii_only in (False, True):
        with contextlib.suppress(UnicodeEncodeError, ValueError):
            forms.add(json.dumps(secret, ensure_ascii=ascii_only)[1:-1])
    return forms


def _encode(s: str) -> bytes:
    # os.environ carries undecodable bytes as surrogate escapes; give them back.
    try:
        return s.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return s.encode("utf-8", "surrogatepass")


NO_SECRETS = Redactor([])
