"""An ACP agent's stdio as the SDK's message transport: bounded, total, checked.

The SDK's own stdio reader grows without bound on a line that never ends, and
its receive loop dies on a message that is JSON but not one it can dispatch (a
batch array, a bare scalar, an object as id), after which every request lorch
has in flight waits for its timeout. lorch hands the SDK a :class:`Wire`
instead (the SDK's message-transport seam): lines are cut at the run's line
limit (``policy.message_max_bytes``) as they arrive, parsed totally
(:func:`lorch.wire.protocol.parse_line`) and checked for the shape the SDK relies
on, answers included (an answer must be to a request lorch sent and has not
had answered). Anything else is an :class:`AcpFault`: reported once through
``on_fault``, after which the SDK sees the end of the stream, so what it has in
flight fails at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

from lorch.wire import protocol
from lorch.wire.errors import FramingError

READ_SIZE = 65536


# The longest ACP message lorch reads from an agent. Not the protocol's 256 KiB
# (policy.message_max_bytes bounds what lorch records and sends): a real agent's
# tool call may carry a whole file it writes, and must not fail its turn for it.
# What lorch holds of a line stays bounded all the same (docs/decisions.md D45).
ACP_LINE_MAX_BYTES = 16 << 20


class AcpFault(FramingError):
    """What an ACP agent sent that lorch cannot take: its connection cannot go on."""


class Wire:
    """The SDK's transport over ``reader`` / ``writer`` (the agent's stdout / stdin)."""

    def __init__(
        self,
        role: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limit: int,
        on_fault: Callable[[AcpFault], None],
    ) -> None:
        self.role = role
        self.limit = limit
        self.on_fault = on_fault
        self.fault: AcpFault | None = None
        self._reader = reader
        self._writer = writer
        self._buf = bytearray()
        self._eof = False
        self._asked: set[int | str] = set()  # ids of lorch's requests not answered yet
        self._lock = asyncio.Lock()

    # -- the SDK's Transport ----------------------------------------------------------

    async def send(self, message: dict[str, Any]) -> None:
        data = (json.dumps(message, separators=(",", ":")) + "\n").encode("utf-8")
        if "method" in message and "id" in message:
            self._asked.add(message["id"])  # before it leaves: the answer may be quick
        async with self._lock:  # one message at a time, whole
            self._writer.write(data)
            await self._writer.drain()

    async def receive(self) -> dict[str, Any] | None:
        """The next message; None at the end of the stream or after a fault."""
        while self.fault is None:
            line = await self._line()
            if line is None or self.fault is not None:
                return None
            if not line.strip():
                continue
            try:
                message = protocol.parse_line(line, self.limit)
            except FramingError as e:
                self.stop(
                    AcpFault(
                        f"agent {self.role} sent a line that is not an ACP message: {e}",
                        size=e.size,
                        prefix=e.prefix,
                        window=e.window,
                    )
                )
                return None
            problem = self._problem(message)
            if problem:
                self.stop(self._bad(line, problem))
                return None
            return message
        return None

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()

    # -- faults -----------------------------------------------------------------------

    def stop(self, fault: AcpFault) -> None:
        """End the stream with ``fault`` (reported once; later ones are dropped)."""
        if self.fault is None:
            self.fault = fault
            self.on_fault(fault)

    def _bad(self, line: bytes, what: str) -> AcpFault:
        return AcpFault(
            f"agent {self.role} sent a malformed ACP message: {what}",
            size=len(line),
            prefix=protocol.prefix_of(line),
            window=protocol.window_of(line),
        )

    def _too_long(self, size: int, head: bytes) -> AcpFault:
        return AcpFault(
            f"agent {self.role} sent an ACP message longer than the {self.limit}-byte line "
            "limit of the ACP transport",
            size=size,
            prefix=protocol.prefix_of(head),
            window=protocol.window_of(head),
        )

    async def _line(self) -> bytes | None:
        """The next line without its newline; never holds more than the limit (and
        one read) of a line: a longer one is a fault as soon as it is seen."""
        while True:
            nl = self._buf.find(b"\n")
            if nl > self.limit or (nl < 0 and len(self._buf) > self.limit):
                self.stop(self._too_long(nl if nl >= 0 else len(self._buf), bytes(self._buf)))
                self._buf.clear()
                return None
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                return line
            if self._eof:
                rest, self._buf = bytes(self._buf), bytearray()
                return rest or None
            chunk = await self._reader.read(READ_SIZE)
            if chunk:
                self._buf += chunk
            else:
                self._eof = True

    def _problem(self, message: dict[str, Any]) -> str:
        """Why ``message`` is not a JSON-RPC message the SDK can take ("" if it is)."""
        has_id = "id" in message
        mid = message.get("id")
        if has_id and not (mid is None or type(mid) in (int, str)):
            return f"its id is a JSON {_kind(mid)} (a string, an integer or null expected)"
        if "method" in message:
            if not isinstance(message["method"], str):
                return f"its method is a JSON {_kind(message['method'])}, not a string"
            params = message.get("params")
            if params is not None and not isinstance(params, (dict, list)):
                return f"its params are a JSON {_kind(params)}"
            return ""
        if not has_id:
            return "neither a request, a notification nor an answer (no method, no id)"
        if type(mid) not in (int, str) or mid not in self._asked:
            return f"an answer to id {json.dumps(mid)}, which no request of lorch's awaits"
        self._asked.discard(mid)
        error = message.get("error")
        if error is not None and not (
            isinstance(error, dict)
            and type(error.get("code")) is int
            and isinstance(error.get("message"), str)
        ):
            return "its error is not an object with an integer code and a message"
        return ""


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )
