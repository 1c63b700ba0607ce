"""The event loop every ACP port shares, and where the SDK's log records go.

The SDK is asyncio and the engine is not: every ACP port runs its coroutines on
one event loop in a thread of its own (:class:`Loop`). The SDK reports trouble
through the root logger; a record goes to the log of the port whose connection
it comes from (:data:`PORT`, which the connection's tasks inherit).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import sys
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from lorch.agents.acp.host import Host

T = TypeVar("T")


class Loop:
    _instance: Loop | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True, name="acp")
        self.thread.start()

    @classmethod
    def get(cls) -> Loop:
        with cls._lock:
            if cls._instance is None:
                cls._instance = Loop()
            return cls._instance

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)


PORT: contextvars.ContextVar[Host | None] = contextvars.ContextVar("lorch_acp_port", default=None)


class _SdkLog(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        port = PORT.get()
        if port is None:
            if record.levelno >= logging.WARNING:
                sys.stderr.write(self.format(record) + "\n")
            return
        exc = record.exc_info[1] if record.exc_info else None
        port.log(
            {
                "stream": "acp-sdk",
                "line": record.getMessage() + (f": {type(exc).__name__}: {exc}" if exc else ""),
            }
        )


_sdk_log_installed = False


def install_sdk_log() -> None:
    global _sdk_log_installed
    if not _sdk_log_installed:
        logging.getLogger().addHandler(_SdkLog())
        _sdk_log_installed = True
