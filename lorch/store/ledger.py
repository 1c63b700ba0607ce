"""The ledger: ``events/<run_id>.ndjson``, append-only, the single source of truth.

Each record is one protocol message (a ``command`` lorch sent, or an ``event``
from an agent or from lorch itself as ``system``), one line, appended with a
write and an fsync before anything acts on it (write-ahead, DESIGN.md §5.1).

**A chain only lorch can write.** Every line ends with a field lorch adds,
``"chain":"hmac-sha256:<hex>"``: an HMAC-SHA256, under the workspace's key
(``state/ledger.key``, 32 random bytes made once, 0600), of the digest of the
line before (for line 1: of the ledger's file name) and of the line's bytes
without that field. An agent that appends, edits, reorders or removes a
record in the middle cannot make the chain hold without the key; reading
names the first line that is not lorch's (:class:`ForgedRecord`). The field is
the ledger's framing: :func:`read` checks and strips it, so the records it
yields are the very messages lorch sent or received. What the key does not
stop (an agent that can read ``state/`` — no sandbox) is in docs/storage.md.

Reading streams the file line by line: memory does not grow with the ledger.
A last line without its newline, or one that does not parse, is a torn tail —
the trace of a crash mid-append — and is cut off when the ledger is opened for
append, with a report. Any other bad line is a :class:`LedgerError` naming the
file and line number; nothing is ever skipped silently.
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from lorch.store import failpoint, layout
from lorch.store.atomic import FILE_MODE, atomic_write_json, ensure_dir, fsync_dir, temp_name
from lorch.store.faults import NO_FAULTS, Faults
from lorch.wire import protocol
from lorch.wire.errors import FramingError, LedgerError, SchemaError, StorageError
from lorch.wire.protocol import Record

KEY_FILE = layout.LEDGER_KEY
_KEY_BYTES = 32
_SUFFIX = re.compile(rb',"chain":"hmac-sha256:([0-9a-f]{64})"}$')
_SUFFIX_LEN = len(b',"chain":"hmac-sha256:"}') + 64


class ForgedRecord(LedgerError):
    """A line whose chain digest is not lorch's: written, changed or moved by someone else."""

    def __init__(self, message: str, line: int) -> None:
        super().__init__(message)
        self.line = line


class LedgerGone(LedgerError):
    """The ledger file was deleted or replaced under a running lorch."""


def key_path(ledger_path: Path) -> Path:
    """The key of the workspace a ledger (``<workspace>/events/<run>.ndjson``) belongs to."""
    return Path(ledger_path).parent.parent / KEY_FILE


def load_key(ledger_path: Path, *, create: bool = False) -> bytes:
    """The workspace's ledger key; made (once, atomically) when ``create`` and missing."""
    path = key_path(ledger_path)
    key = _read_key(path)
    if key is not None:
        return key
    if not create:
        raise LedgerError(
            f"{path}: missing: the key that proves {Path(ledger_path).name} was written by "
            "lorch is gone, so none of its records can be trusted; restore it from a backup"
        )
    return _make_key(path)


def _read_key(path: Path) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LedgerError(f"{path}: cannot read the ledger key: {e.strerror}") from None
    try:
        data = os.read(fd, 2 * _KEY_BYTES + 2)
    finally:
        os.close(fd)
    text = data.strip()
    if not re.fullmatch(rb"[0-9a-f]{%d}" % (2 * _KEY_BYTES), text):
        raise LedgerError(f"{path}: not a ledger key ({2 * _KEY_BYTES} hex digits expected)")
    return bytes.fromhex(text.decode())


def _make_key(path: Path) -> bytes:
    # Written whole and durable under a temp name, then linked into place:
    # link() fails if another lorch made one first, and then that one counts.
    ensure_dir(path.parent)
    key = os.urandom(_KEY_BYTES)
    tmp = path.parent / temp_name(path.name)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            os.write(fd, key.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            theirs = _read_key(path)
            if theirs is None:
                raise
            return theirs
        finally:
            os.unlink(tmp)
        fsync_dir(path.parent)
    except OSError as e:
        raise StorageError(f"cannot create the ledger key {path}: {e.strerror}") from e
    return key


def genesis(key: bytes, name: str) -> str:
    """The digest line 1 chains to: the ledger's own file name (a ledger moved is not lorch's)."""
    return hmac.new(key, b"lorch-ledger-v1\n" + name.encode(), hashlib.sha256).hexdigest()


def link(key: bytes, prev: str, body: bytes) -> str:
    """The chain digest of a line whose bytes (without the chain field) are ``body``."""
    return hmac.new(key, prev.encode() + b"\n" + body, hashlib.sha256).hexdigest()


def seal(key: bytes, prev: str, line: bytes) -> tuple[bytes, str]:
    """``line`` (one encoded record, with its newline) with its chain field, and its digest."""
    body = line[:-1] if line.endswith(b"\n") else line
    if not body.endswith(b"}") or body == b"{}":
        raise LedgerError("a ledger record is a non-empty JSON object")
    mac = link(key, prev, body)
    return body[:-1] + b',"chain":"hmac-sha256:' + mac.encode() + b'"}\n', mac


def unchained(raw: bytes) -> bytes:
    """A ledger line's record bytes: without its chain field (unchecked; as is if it has none)."""
    return raw[:-_SUFFIX_LEN] + b"}" if _SUFFIX.search(raw) else raw


def unseal(key: bytes, prev: str, raw: bytes) -> tuple[bytes, str] | None:
    """(the line's bytes without the chain field, its digest); None if the chain does not hold."""
    m = _SUFFIX.search(raw)
    if m is None:
        return None
    body = raw[:-_SUFFIX_LEN] + b"}"
    mac = m.group(1).decode()
    if not hmac.compare_digest(link(key, prev, body), mac):
        return None
    return body, mac


def head_path(ledger_path: Path) -> Path:
    """Where lorch notes how far a ledger reached (``state/heads/<run>.json``)."""
    return layout.head(Path(ledger_path))


def write_head(ledger_path: Path, records: int, chain: str) -> None:
    """Note that the ledger holds (durably) at least ``records`` records, the last one ``chain``.

    Written only once the ledger is synced, so it never claims more than the
    disk holds; a ledger found shorter than its head was cut by someone.
    """
    atomic_write_json(head_path(ledger_path), {"records": records, "chain": chain})


def check_head(ledger_path: Path, records: int) -> None:
    """A ledger of ``records`` records that its head says reached further was cut: stop."""
    try:
        head = json.loads(head_path(ledger_path).read_bytes())
    except (OSError, ValueError):
        return  # no head yet (a crash before the first): nothing to compare with
    noted = head.get("records") if isinstance(head, dict) else None
    if isinstance(noted, int) and noted > records:
        raise LedgerError(
            f"{ledger_path}: the ledger holds {records} records, but lorch had recorded "
            f"{noted} (state/heads/{Path(ledger_path).stem}.json): it was cut after record "
            f"{records}; lorch will not resume over lost records: restore the ledger from a "
            "backup"
        )


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
    chain: str = ""  # the digest of the last good line (what the next one chains to)


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


def _forged(path: Path, lineno: int, raw: bytes) -> ForgedRecord:
    """The one line that names the first record that is not lorch's."""
    what = ""
    try:
        claim = json.loads(raw)
        if isinstance(claim, dict):
            name = claim.get("event") or claim.get("action") or claim.get("kind")
            sender = claim.get("from")
            who = sender.get("agent_type") if isinstance(sender, dict) else None
            what = f" ({name}" + (f" from {who}" if who else "") + ")"
    except (ValueError, RecursionError):
        pass
    kept = "" if lineno == 1 else f" (line {lineno - 1} and every line before it are)"
    return ForgedRecord(
        f"{path}:{lineno}: record {lineno}{what} is not lorch's: its chain digest does not "
        f"hold{kept}; the ledger was changed outside lorch, which trusts nothing from this line "
        "on and leaves the file as it is",
        lineno,
    )


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


@dataclass(frozen=True)
class _Line:
    lineno: int
    offset: int
    raw: bytes
    record: Record | None  # None: a torn last line
    chain: str
    torn: str = ""  # why it is torn


def _lines(path: Path, validate: bool, key: bytes | None) -> Iterator[_Line]:
    """Every line checked against the chain; the last one may be torn (record None)."""
    path = Path(path)
    prev = ""
    held: tuple[int, int, bytes, bool] | None = None
    for item in iter_lines(path):
        if key is None:
            # An empty ledger proves nothing and needs no key (a crash before record 1).
            key = load_key(path)
        if not prev:
            prev = genesis(key, path.name)
        if held is not None:
            # Not the last line: it must be whole, lorch's, and valid.
            lineno, offset, raw, _ = held
            opened = unseal(key, prev, raw)
            if opened is None:
                raise _forged(path, lineno, raw)
            body, prev = opened
            yield _Line(lineno, offset, raw, _check(path, lineno, body, validate), prev)
        held = item
    if held is None or key is None:
        return
    lineno, offset, raw, has_nl = held
    if not has_nl:
        yield _Line(lineno, offset, raw, None, prev, "no newline")
        return
    opened = unseal(key, prev, raw)
    if opened is None:
        try:
            protocol.parse_line(raw)
        except FramingError as e:
            # Not even JSON: the trace of a crash mid-append, cut like a torn line.
            yield _Line(lineno, offset, raw, None, prev, f"{path}:{lineno}: {e}")
            return
        raise _forged(path, lineno, raw)
    body, mac = opened
    try:
        record = _check(path, lineno, body, validate)
    except LedgerError as e:
        yield _Line(lineno, offset, raw, None, prev, str(e))
        return
    yield _Line(lineno, offset, raw, record, mac)


def scan(path: Path, *, validate: bool = True, key: bytes | None = None) -> Scan:
    """Count good records and find a torn tail, without loading the file."""
    count = good = 0
    chain = ""
    for line in _lines(path, validate, key):
        if line.record is None:
            torn = TornTail(line.lineno, line.offset, len(line.raw), line.raw[:80], line.torn)
            return Scan(count, good, torn, line.chain)
        count, good, chain = count + 1, line.offset + len(line.raw) + 1, line.chain
    return Scan(count, good, None, chain)


def read(
    path: Path, *, validate: bool = True, allow_torn: bool = True, key: bytes | None = None
) -> Iterator[Record]:
    """Replay every good record in order, streaming, each checked against the chain.

    A torn last line is ignored when ``allow_torn`` (it will be cut on the next
    open for append); otherwise it is an error. A line that is not lorch's is a
    :class:`ForgedRecord`. ``key``: the workspace's (default: read from
    ``state/ledger.key`` beside ``events/``).
    """
    for line in _lines(path, validate, key):
        if line.record is None:
            if allow_torn:
                return
            raise LedgerError(
                f"{path}:{line.lineno}: torn last line ({len(line.raw)} bytes, {line.torn})"
            )
        yield line.record


class Ledger:
    """An open ledger for appending. Use :meth:`open`; close when done."""

    def __init__(
        self,
        path: Path,
        fd: int,
        records: int,
        *,
        fsync: bool = True,
        key: bytes | None = None,
        chain: str = "",
        faults: Faults = NO_FAULTS,
    ) -> None:
        self.path = path
        self._fd = fd
        self.records = records
        self._fsync = fsync
        self._key = key if key is not None else load_key(path, create=True)
        self.chain = chain or genesis(self._key, path.name)  # the digest the next line chains to
        self._faults = faults
        self._failpoint = faults.crash
        self._skip_fsync = faults.planted_bug("ledger_fsync_skipped")
        st = os.fstat(fd)
        self._inode = (st.st_dev, st.st_ino)
        # Bytes known to be on disk: a simulated power loss keeps only these.
        self.size = st.st_size
        self.synced_size = self.size

    @classmethod
    def open(
        cls,
        path: Path,
        *,
        fsync: bool = True,
        create: bool = True,
        faults: Faults = NO_FAULTS,
    ) -> tuple[Ledger, TornTail | None]:
        """Open for append; cut a torn tail first and report it.

        A line that is not lorch's (the chain does not hold) is a
        :class:`ForgedRecord` and the file is left as it is. ``faults``: the
        crash point and planted bugs the entry point was given (tests only).
        """
        path = Path(path)
        torn = None
        records = 0
        chain = ""
        exists = path.exists()
        if not exists and not create:
            raise LedgerError(f"{path}: no such ledger")
        key = load_key(path, create=not exists or path.stat().st_size == 0)
        if exists:
            result = scan(path, key=key)
            records, torn, chain = result.records, result.torn, result.chain
            check_head(path, records)
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
        else:
            ensure_dir(path.parent)
        try:
            failpoint.io_fault(path)
            flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(path, flags, 0o600)
        except OSError as e:
            raise StorageError(f"cannot open ledger {path}: {e.strerror}") from e
        if torn is None and records == 0:
            fsync_dir(path.parent)
        opened = cls(path, fd, records, fsync=fsync, key=key, chain=chain, faults=faults)
        return opened, torn

    def append(self, record: Record, *, sync: bool = True, line: bytes | None = None) -> int:
        """Append one record; return its 1-based number in the file.

        With ``sync`` (the default) the record and every one before it are on
        disk when this returns. ``sync=False`` leaves it in the page cache for a
        later :meth:`sync` to make durable (group commit): the caller must not
        act on it before that. ``line``: the record already encoded
        (``protocol.encode(record)``), when the caller needs the bytes too; the
        ledger adds its chain field to them.
        """
        if line is None:
            line = protocol.encode(record)
        self._still_here()
        line, chain = seal(self._key, self.chain, line)
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
        self.chain = chain
        if fp is not None:
            if fp.mode == "powerloss" and fp.k == n:
                self._lose_power(n)
            self._faults.after_durable(n)
        return n

    def _still_here(self) -> None:
        """Stop at once if the file was deleted or replaced under us (not after every step).

        What lorch wrote is still in its open file: it goes back to the ledger's
        name if that is free, else beside it, so nothing lorch can prove is lost.
        """
        try:
            mine = os.fstat(self._fd)
            unlinked = mine.st_nlink == 0
            st = os.stat(self.path, follow_symlinks=False)
            there = (st.st_dev, st.st_ino) == self._inode
        except FileNotFoundError:
            unlinked, there, st = True, False, None
        except OSError as e:
            raise StorageError(f"cannot check ledger {self.path}: {e.strerror}") from e
        if there and not unlinked:
            if mine.st_size != self.size:
                raise self._foreign(mine.st_size)
            return
        how = "deleted" if st is None else "replaced by another file"
        kept = self._keep()
        raise LedgerGone(
            f"{self.path}: the ledger was {how} while the run was going; lorch stopped at "
            f"once and {kept}"
        )

    def _foreign(self, size: int) -> LedgerError:
        """Someone else wrote to (or cut) the ledger while lorch held it: stop now."""
        if size > self.size:
            what = f"{size - self.size} bytes lorch did not write were added after"
        else:
            what = f"the file was cut to {size} bytes, inside"
        return LedgerError(
            f"{self.path}: {what} its record {self.records}; lorch stopped at once (the "
            f"first {self.records} records are lorch's, and `lorch verify` names the first "
            "that is not)"
        )

    def _keep(self) -> str:
        """Write what lorch appended (every line, chain intact) back to disk; say where."""
        try:
            data = os.pread(self._fd, self.size, 0)
        except OSError as e:
            return f"could not read back its {self.records} records: {e.strerror}"
        for target in (self.path, self.path.with_name(self.path.name + ".lorch")):
            try:
                fd = os.open(
                    target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE
                )
            except FileExistsError:
                continue
            except OSError as e:
                return f"could not restore its {self.records} records: {e.strerror}"
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(target.parent)
            if target == self.path:
                return (
                    f"restored its {self.records} records to {target.name}; find out what "
                    "removed it, then lorch resume"
                )
            return (
                f"kept its {self.records} records in {target.name}: move the other file "
                f"aside and rename {target.name} to {self.path.name}, then lorch resume"
            )
        return f"found {self.path.name} and {self.path.name}.lorch taken; nothing restored"

    def note_head(self) -> None:
        """Make every record durable, then note how far the ledger reached (see write_head)."""
        self.sync()
        write_head(self.path, self.records, self.chain)

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
