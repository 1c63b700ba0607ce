"""The conformance battery under lorch's checkpoints (``lorch conformance --checkpoints``).

For a role lorch makes exactly-once (``"idempotency": "lorch"``, every ACP
role), what reaches the agent is not what the IDEMP checks send: lorch never
sends a key whose answer it has recorded, never sends a key twice at once, and
rolls the workspace back to the key's pre-command checkpoint before it sends an
interrupted key again (DESIGN.md §5.12). :func:`under_checkpoints` puts that
same rule between the battery and the agent under test, so the battery tells
whether the agent is safe to resume *under lorch*, even when it fails bare.

Every decision of the layer is a line of the transcript (direction ``lch``),
and answers it gives from its record are marked as such.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lorch.conformance.driver import Line
from lorch.store.checkpoint import Checkpoints
from lorch.store.layout import CHECKPOINT_STORE
from lorch.wire import protocol, vocabulary

_OWN = frozenset({"_inner", "_ck", "_keys", "_synth"})


@dataclass
class _Key:
    inputs: Any
    pre: str
    generation: int | None = None  # the agent generation working on it, if any
    corr: str = ""  # correlation id it was sent with
    answer: dict[str, Any] | None = None
    held: list[dict[str, Any]] = field(default_factory=list)


class UnderCheckpoints:
    """Wraps an agent under test (``send``, ``next``, ``generation``, ``t``)."""

    def __init__(self, inner: Any, workspace: Path) -> None:
        object.__setattr__(self, "_inner", inner)
        object.__setattr__(self, "_ck", Checkpoints(workspace, workspace / CHECKPOINT_STORE))
        object.__setattr__(self, "_keys", {})
        object.__setattr__(self, "_synth", [])

    # Everything else is the wrapped agent's (process, transcript, restart, ...).
    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self._inner, name, value)

    def _note(self, text: str, message: dict[str, Any] | None = None) -> Line:
        line: Line = self._inner.t.add(
            "lch", text.encode(), self._inner.generation, message=message
        )
        return line

    def send(self, message: dict[str, Any] | bytes) -> Line:
        if isinstance(message, bytes) or message.get("kind") != "command":
            return self._send(message)
        ik = str(message.get("idempotency_key"))
        key = self._keys.get(ik)
        if key is not None and key.inputs != message.get("inputs"):
            # Not something lorch can send (a key is a digest of its inputs):
            # let the agent judge it, as the check means to.
            return self._send(message)
        if key is None:
            self._keys[ik] = _Key(message.get("inputs"), self._ck.take())
            return self._forward(self._keys[ik], message)
        if key.answer is not None:
            self._replay(key, message)
            return self._note(f"[lorch] {ik[:19]}… answered from the record, not sent again")
        if key.generation == self._inner.generation:
            key.held.append(message)
            return self._note(f"[lorch] {ik[:19]}… is in flight: held until it is answered")
        restored = self._ck.rollback(key.pre)
        self._note(
            f"[lorch] {ik[:19]}… was interrupted: rolled back {len(restored)} path(s) "
            "to its checkpoint before sending it again"
        )
        return self._forward(key, message)

    def _send(self, message: dict[str, Any] | bytes) -> Line:
        line: Line = self._inner.send(message)
        return line

    def _forward(self, key: _Key, message: dict[str, Any]) -> Line:
        key.generation = self._inner.generation
        key.corr = str(message.get("correlation_id"))
        return self._send(message)

    def _replay(self, key: _Key, cmd: dict[str, Any]) -> None:
        assert key.answer is not None
        msg = {
            **key.answer,
            "message_id": f"evt-{uuid.uuid4().hex[:12]}",
            "correlation_id": cmd["correlation_id"],
            "task_id": cmd["task_id"],
        }
        self._synth.append(self._note(protocol.encode(msg).rstrip(b"\n").decode(), msg))

    def next(self, timeout: float) -> Line | None:
        if self._synth:
            line: Line = self._synth.pop(0)
            return line
        got: Line | None = self._inner.next(timeout)
        msg = got.message if got is not None else None
        if msg is None or msg.get("kind") != "event":
            return got
        if msg.get("event") not in vocabulary.TERMINAL_EVENTS:
            return got
        for key in self._keys.values():
            if key.generation != self._inner.generation or key.answer is not None:
                continue
            if msg.get("correlation_id") != key.corr:
                continue
            key.generation = None
            if msg.get("event") == "error":
                # The attempt failed: a copy held meanwhile is the next attempt.
                if key.held:
                    self._ck.rollback(key.pre)
                    self._forward(key, key.held.pop(0))
                break
            key.answer = msg
            self._ck.take()  # the post-command checkpoint, as lorch takes it
            for held in key.held:
                self._replay(key, held)
            key.held.clear()
            break
        return got


def under_checkpoints(agent: Any, workspace: Path) -> Any:
    """``agent`` as lorch drives a role with ``"idempotency": "lorch"``."""
    return UnderCheckpoints(agent, workspace)
