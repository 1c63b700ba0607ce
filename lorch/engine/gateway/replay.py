"""Replay: answering a request from a recorded call instead of the upstream.

A request is answered from the record when its fingerprint (over the normalized
request, :mod:`lorch.engine.gateway.normalize`) equals that of a recorded call not used
yet; the earliest such call answers, and is used up. Calls that are not model
calls (model lists, token counts) are never used up: an agent asks for them
again and again, and the answer does not spend anything.

Two modes:

- ``strict`` (a cassette replayed with no upstream): a request no record answers
  is refused; :meth:`Replay.miss` names where it differs from the nearest
  recorded request (the one with the fewest differing fields), preferring
  the calls not used yet.
- not strict (a turn re-prompted after a crash): the recorded calls answer
  until the first request that none matches; from then on every request goes
  live, since the conversation has left the recorded path.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

from lorch.engine.gateway.cassette import Recorded
from lorch.engine.gateway.normalize import distance, first_difference, leaves


class Replay:
    """The recorded calls a gateway may answer from; thread-safe."""

    def __init__(self, calls: Iterable[Recorded], *, strict: bool) -> None:
        self.strict = strict
        self._calls = list(calls)
        self._used = [False] * len(self._calls)
        self._live = False  # not strict: a request left the recorded path
        self._lock = threading.Lock()

    @property
    def remaining(self) -> int:
        """How many recorded model calls have not answered a request yet."""
        with self._lock:
            return sum(
                1 for c, u in zip(self._calls, self._used, strict=True) if c.model_call and not u
            )

    def answer(self, fingerprint: str) -> Recorded | None:
        """The recorded call that answers a request with ``fingerprint``; None: none does."""
        with self._lock:
            if self._live:
                return None
            for i, call in enumerate(self._calls):
                if call.fingerprint != fingerprint:
                    continue
                if not call.model_call:
                    return call
                if not self._used[i]:
                    self._used[i] = True
                    return call
            if not self.strict:
                self._live = True
            return None

    def miss(self, request: dict[str, object]) -> str:
        """Where ``request`` differs from the nearest recorded request, in one line."""
        with self._lock:
            candidates = [c for c, u in zip(self._calls, self._used, strict=True) if not u]
            candidates = candidates or self._calls
        if not candidates:
            return "the cassette holds no calls"
        sent = leaves(request)
        _, best_index = min(
            ((distance(sent, leaves(c.request)), i) for i, c in enumerate(candidates)),
        )
        nearest = candidates[best_index]
        return f"differs from recorded call {nearest.fingerprint[7:19]}: " + first_difference(
            request, nearest.request
        )
