"""Deterministic crash injection for the ledger writer.

``LORCH_CRASH_AT=MODE:K`` makes the process act when ledger record *K* (1-based,
counted in the ledger file, whoever appended the earlier records) is written:

- ``after:K``     SIGKILL lorch right after record K is durable;
- ``torn:K``      write part of record K (no newline), fsync, SIGKILL lorch;
- ``agent:K``     after record K is durable, SIGKILL the process group of the
                  agent that is working on a command (lorch itself goes on);
- ``powerloss:K`` after record K is durable, SIGKILL every agent group and lorch;
- ``diskfull:K``  write part of record K, then fail it with ENOSPC, as a disk
                  that fills up in the middle of a run does (lorch goes on to
                  report it; no crash).

Unset, it costs one attribute check per append. The crash harness is its user;
the entry point parses it once into ``lorch/store/faults.py``'s ``Faults``, which
the ledger is given.

``LORCH_IO_FAULT=ERRNO:TEXT[:N]`` makes lorch's writes to any path containing
``TEXT`` fail with ``ERRNO`` (``ENOSPC``, ``EROFS``, ``EACCES``, ``EIO``, …)
from the N-th such write on (default: the first), as a disk that fills up or
turns read-only does. Tests use it to check that every place lorch writes —
ledger, logs, state, receipts, transcript, lock file — reports one line.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from dataclasses import dataclass
from pathlib import PurePath

from lorch.wire.errors import UsageError

ENV = "LORCH_CRASH_AT"
IO_ENV = "LORCH_IO_FAULT"
MODES = ("after", "torn", "agent", "powerloss", "diskfull")


@dataclass(frozen=True)
class Failpoint:
    mode: str
    k: int

    def before_write(self, n: int) -> bool:
        """True when record ``n`` must be torn instead of written."""
        return self.mode == "torn" and n == self.k

    def disk_full(self, n: int) -> bool:
        """True when writing record ``n`` must fail as on a full disk."""
        return self.mode == "diskfull" and n == self.k


def parse(spec: str) -> Failpoint:
    mode, sep, k = spec.partition(":")
    if not sep or mode not in MODES or not k.isdigit() or int(k) < 1:
        raise UsageError(
            f"{ENV}={spec!r}: expected MODE:K with MODE one of {', '.join(MODES)} and K >= 1"
        )
    return Failpoint(mode, int(k))


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def kill_group(pgid: int) -> None:
    if pgid:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)


@dataclass
class IOFault:
    errno: int
    text: str
    start: int = 1
    seen: int = 0

    def check(self, path: str | os.PathLike[str]) -> None:
        if self.text not in os.fspath(path):
            return
        self.seen += 1
        if self.seen >= self.start:
            raise OSError(self.errno, os.strerror(self.errno), os.fspath(path))


def parse_io_fault(spec: str) -> IOFault:
    name, _, rest = spec.partition(":")
    text, _, n = rest.rpartition(":") if rest.count(":") else (rest, "", "1")
    code = getattr(errno, name, None)
    if not isinstance(code, int) or not name.startswith("E") or not text or not n.isdigit():
        raise UsageError(f"{IO_ENV}={spec!r}: expected ERRNO:TEXT[:N], e.g. EROFS:receipts/")
    return IOFault(code, text, max(1, int(n)))


_io: list[IOFault | None] = []  # parsed once per process, on the first write


def io_fault(path: str | os.PathLike[str] | PurePath) -> None:
    """Raise the configured ``OSError`` for a write to ``path`` (no-op when unset)."""
    if not _io:
        spec = os.environ.get(IO_ENV)
        _io.append(parse_io_fault(spec) if spec else None)
    fault = _io[0]
    if fault is not None:
        fault.check(path)
