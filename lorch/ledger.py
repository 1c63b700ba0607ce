"""The ledger: ``events/<run_id>.ndjson``, append-only, the single source of truth.

Each record is one protocol message (a ``command`` lorch sent, or an ``event``
from an agent or from lorch itself as ``system``), one line, appended with a
write and an fsync before anything acts on it (write-ahead, DESIGN.md §5.1).

Reading streams the file line by line: memory does not grow with the ledger.
A last line without its newline, or one that does not parse, is a torn tail —
the trace of a crash mid-append — and is cut off when the ledger is opened for
append, with a report. Any other bad line is a :class:`LedgerError` naming the
file and line number; nothing is ever skipped silently.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lorch import _planted, failpoint, protocol
from lorch.atomic import ensure_dir, fsync_dir
from lorch.errors import FramingError, LedgerError, SchemaError, StorageError
from lorch.protocol import Record


@dataclass(frozen=True)
class TornTail:
    """A cut (or cuttable) partial last line."""

    line: int
    offset: int
    size: int
    prefix: bytes
    reason: str


@dataclass(frozen=True)
class Scan:
    records: int
    good_bytes: int
    torn: TornTail | None


def _check(path: Path, lineno: int, raw: bytes, validate: bool) -> Record:
    try:
        record = protocol.parse_line(raw)
        if validate:
            kind = protocol.validate_message(record)
            if kind not in ("command", "event"):
                raise SchemaError(f"$.kind: ledger records are command or event, found {kind!r}")
    except (FramingError, SchemaError) as e:
        raise LedgerError(f"{path}:{lineno}: unreadable ledger record: {e}") from None
    return record


def iter_lines(path: Path) -> Iterator[tuple[int, int, bytes, bool]]:
    """(line number, byte offset, raw line without newline, had newline), streaming."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed in finally, generator-owned
    except FileNotFoundError:
        raise LedgerError(f"{path}: no such ledger") from None
    try:
        offset = 0
        for lineno, raw in enumerate(f, start=1):
            has_nl = raw.endswith(b"\n")
            body = raw[:-1] if has_nl else raw
            yield lineno, offset, body, has_nl
            offset += len(raw)
    finally:
        f.close()


def scan(path: Path, *, validate: bool = True) -> Scan:
    """Count good records and find a torn tail, without loading the file."""
    count = 0
    good = 0
    prev: tuple[int, int, bytes, bool] | None = None
    for item in iter_lines(path):
        if prev is not None:
            # Not the last line: it must be whole and valid.
            lineno, offset, body, _ = prev
            _check(path, lineno, body, validate)
            count += 1
            good = offset + len(body) + 1
        prev = item
    if prev is None:
        return Scan(0, 0, None)
    lineno, offset, body, has_nl = prev
    if not has_nl:
        return Scan(count, good, TornTail(lineno, offset, len(body), body[:80], "no newline"))
    try:
        _check(path, lineno, body, validate)
    except LedgerError as e:
        return Scan(count, good, TornTail(lineno, offset, len(body), body[:80], str(e)))
    return Scan(count + 1, offset + len(body) + 1, None)


def read(path: Path, *, validate: bool = True, allow_torn: bool = True) -> Iterator[Record]:
    """Replay every good record in order, streaming.

    A torn last line is ignored when ``allow_torn`` (it will be cut on the next
    open for append); otherwise it is an error.
    """
    prev: tuple[int, int, bytes, bool] | None = None
    for item in iter_lines(path):
        if prev is not None:
            yield _check(path, prev[0], prev[2], validate)
        prev = item
    if prev is None:
        return
    lineno, _, body, has_nl = prev
    if not has_nl:
        if allow_torn:
            return
        raise LedgerError(f"{path}:{lineno}: torn last line ({len(body)} bytes, no newline)")
    try:
        record = _check(path, lineno, body, validate)
    except LedgerError:
        if allow_torn:
            return
        raise
    yield record


class Ledger:
    """An open ledger for appending. Use :meth:`open`; close when done."""

    def __init__(self, path: Path, fd: int, records: int, *, fsync: bool = True) -> None:
        self.path = path
        self._fd = fd
        self.records = records
        self._fsync = fsync
        self._failpoint = failpoint.from_env()
        self._skip_fsync = _planted.enabled("ledger_fsync_skipped")
        # Bytes known to be on disk: a simulated power loss keeps only these.
        self.size = os.fstat(fd).st_size
        self.synced_size = self.size

    @classmethod
    def open(
        cls, path: Path, *, fsync: bool = True, create: bool = True
    ) -> tuple[Ledger, TornTail | None]:
        """Open for append; cut a torn tail first and report it."""
        failpoint.from_env()  # a bad LORCH_CRASH_AT is refused before any file is made
        path = Path(path)
        torn = None
        records = 0
        if path.exists():
            result = scan(path)
            records, torn = result.records, result.torn
            if torn is not None:
                try:
                    failpoint.io_fault(path)
                    with open(path, "r+b") as f:
                        f.truncate(result.good_bytes)
                        os.fsync(f.fileno())
                except OSError as e:
                    raise StorageError(
                        f"cannot cut the torn last line of ledger {path}: {e.strerror}"
                    ) from e
        elif not create:
            raise LedgerError(f"{path}: no such ledger")
        else:
            ensure_dir(path.parent)
        try:
            failpoint.io_fault(path)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            raise StorageError(f"cannot open ledger {path}: {e.strerror}") from e
        if torn is None and records == 0:
            fsync_dir(path.parent)
        return cls(path, fd, records, fsync=fsync), torn

    def append(self, record: Record, *, sync: bool = True, line: bytes | None = None) -> int:
        """Append one record; return its 1-based number in the file.

        With ``sync`` (the default) the record and every one before it are on
        disk when this returns. ``sync=False`` leaves it in the page cache for a
        later :meth:`sync` to make durable (group commit): the caller must not
        act on it before that. ``line``: the record already encoded
        (``protocol.encode(record)``), when the caller needs the bytes too.
        """
        if line is None:
            line = protocol.encode(record)
        n = self.records + 1
        fp = self._failpoint
        try:
            failpoint.io_fault(self.path)
            if fp is not None and fp.before_write(n):
                os.write(self._fd, line[: max(1, len(line) // 2)])
                os.fsync(self._fd)
                failpoint.kill_self()
            if fp is not None and fp.disk_full(n):
                self.size += os.write(self._fd, line[: max(1, len(line) // 2)])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written = os.write(self._fd, line)
            if written != len(line):
                # O_APPEND on a regular file writes all or fails; a short write
                # means the disk is full: leave a torn tail that resume will cut.
                raise OSError(28, "short write (disk full?)")
            self.size += written
            if self._fsync and sync:
                if not self._skip_fsync:
                    os.fsync(self._fd)
                self.synced_size = self.size
        except OSError as e:
            raise StorageError(f"cannot append to ledger {self.path}: {e.strerror}") from e
        self.records = n
        if fp is not None:
            if fp.mode == "powerloss" and fp.k == n:
                self._lose_power(n)
            fp.after_durable(n)
        return n

    def sync(self) -> None:
        """Make every appended record durable (one fsync for all of them)."""
        if self.synced_size == self.size or not self._fsync:
            return
        try:
            if not self._skip_fsync:
                os.fsync(self._fd)
        except OSError as e:
            raise StorageError(f"cannot append to ledger {self.path}: {e.strerror}") from e
        self.synced_size = self.size

    @property
    def unsynced(self) -> bool:
        return self._fsync and self.synced_size != self.size

    def _lose_power(self, n: int) -> None:
        """Simulate a power cut: the page cache is lost, only synced bytes stay.

        How many bytes were lost (records written but not yet synced) is left
        in ``<ledger>.powerloss.json``, for the crash harness to show.
        """
        lost = self.size - self.synced_size
        if lost:
            note = self.path.with_name(self.path.name + ".powerloss.json")
            note.write_text(json.dumps({"record": n, "lost_bytes": lost}))
            fd = os.open(note, os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)
        os.ftruncate(self._fd, self.synced_size)
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
