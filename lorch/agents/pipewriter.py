"""Writing to an agent's stdin without ever blocking lorch (issue 14, point 3).

A pipe holds 64 KiB; an agent that does not read (hung, or hostile) would block
a plain ``write`` of a larger command forever, and with it lorch's timeouts.
:class:`PipeWriter` writes what the pipe takes at once (the common case: the
whole command, no thread hand-off) and hands the rest to a thread of its own,
which writes it as the agent reads. The caller returns at once either way, so
the command's deadline stays with the engine: an agent that never reads is
timed out, killed and restarted like one that never answers, which also ends
the thread (the pipe breaks).
"""

from __future__ import annotations

import collections
import contextlib
import os
import selectors
import threading


class PipeWriter:
    """Ordered, non-blocking writes of whole messages to one pipe."""

    def __init__(self, fd: int, name: str = "agent") -> None:
        self._fd = fd
        self._name = name
        os.set_blocking(fd, False)
        self._pending: collections.deque[memoryview] = collections.deque()
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None
        self.broken = False  # the reader is gone (EPIPE) or the pipe was closed
        self._closed = False

    @property
    def pending(self) -> int:
        """Bytes accepted but not yet in the pipe."""
        with self._lock:
            return sum(len(v) for v in self._pending)

    def write(self, data: bytes) -> bool:
        """Queue ``data`` after what is pending; False if the pipe is broken. Never blocks."""
        with self._lock:
            if self.broken or self._closed:
                return False
            view = memoryview(data)
            if not self._pending:
                view = self._write_some(view)
                if self.broken:
                    return False
            if view:
                self._pending.append(view)
                self._ready.notify()
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._drain, daemon=True, name=f"{self._name}-stdin"
                    )
                    self._thread.start()
        return True

    def _write_some(self, view: memoryview) -> memoryview:
        """As much of ``view`` as the pipe takes now; the rest is returned."""
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                break
            except OSError:  # EPIPE: the agent is gone; EBADF: closed under us
                self.broken = True
                self._pending.clear()
                break
            view = view[n:]
        return view

    def _drain(self) -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(self._fd, selectors.EVENT_WRITE)
            while True:
                with self._lock:
                    while not self._pending and not self._closed and not self.broken:
                        self._ready.wait()
                    if self._closed or self.broken:
                        return
                # Wait, unlocked, until the pipe takes more (short slices, so a
                # close is noticed).
                if not sel.select(0.2):
                    continue
                with self._lock:
                    if self._closed or self.broken:
                        return
                    while self._pending and not self.broken:
                        rest = self._write_some(self._pending[0])
                        if self.broken:
                            return
                        if rest:
                            self._pending[0] = rest
                            break
                        self._pending.popleft()

    def close(self) -> None:
        """EOF to the reader; anything still pending is dropped."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._pending.clear()
            self._ready.notify_all()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()  # it wakes within a select slice
        with contextlib.suppress(OSError):
            os.close(self._fd)
