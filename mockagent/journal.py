"""journal.ndjson: mockagent's execution log, which is also its idempotency cache.

One line per state change of an execution: ``{"ik", "action", "task_id",
"attempt", "state", "pid", "at"}``. A ``completed`` line whose work succeeded
also carries the answer (``digest`` of the inputs and the ``events`` sent), so
the journal is the durable cache: one fsync per executed key makes both the
answer and the "completed" mark durable, after the work's files.

Several mockagent processes may share a state dir: each keeps an in-memory index
built from the journal at start, and reads what the others appended since before
it answers a key (under that key's lock). A torn or unparseable line (a crash
mid-append) is ignored.
"""

from __future__ import annotations

import json
import os

from mockagent.wire import now

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_canonical = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode
_sync = getattr(os, "fdatasync", os.fsync)  # data and size; the rest of the inode is not needed


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def makedirs(path: str, mode: int = 0o700) -> None:
    """``os.makedirs``, with each new level's name made durable (its parent
    fsynced): a file in a directory whose own entry a power cut loses is lost."""
    missing = []
    cur = os.path.abspath(path)
    while not os.path.isdir(cur):
        missing.append(cur)
        cur = os.path.dirname(cur)
    for d in reversed(missing):
        try:
            os.mkdir(d, mode)
        except FileExistsError:
            continue
        fsync_dir(os.path.dirname(d))


class Journal:
    def __init__(self, state_dir: str) -> None:
        makedirs(state_dir)
        self.path = os.path.join(state_dir, "journal.ndjson")
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT
        try:
            self.fd = os.open(self.path, flags | os.O_EXCL, 0o600)
            fsync_dir(state_dir)  # the new file's name is durable before any line in it
        except FileExistsError:
            self.fd = os.open(self.path, flags, 0o600)
        self.pid = os.getpid()
        # Bytes read and parsed so far; always at the start of a line.
        self.offset = 0
        # The last line in the file has no newline yet (torn by a crash): the next
        # append starts with one, so the torn bytes stay a line of their own.
        self.torn = False
        # Key -> {"digest", "events"}: the answer to every key whose work succeeded.
        self.answers: dict[str, dict[str, Any]] = {}
        # Action -> key -> call number, numbered in the order keys were first seen.
        self.keys_by_action: dict[str, dict[str, int]] = {}
        # Pre-journal versions kept answers in cache/<key>.json: still read them.
        legacy = os.path.join(state_dir, "cache")
        self.legacy_dir = legacy if os.path.isdir(legacy) else None
        self._load()

    # -- reading --------------------------------------------------------------

    def _read_new(self) -> list[dict[str, Any]]:
        """Whole lines appended since the last read (torn or bad ones left out)."""
        chunks = []
        pos = self.offset
        while True:
            chunk = os.pread(self.fd, 1 << 20, pos)
            if not chunk:
                break
            chunks.append(chunk)
            pos += len(chunk)
        if not chunks:
            return []
        data = b"".join(chunks)
        end = data.rfind(b"\n") + 1
        self.torn = end < len(data)
        self.offset += end
        out = []
        for raw in data[:end].splitlines():
            try:
                e = json.loads(raw)
            except ValueError:
                continue
            if isinstance(e, dict) and isinstance(e.get("ik"), str):
                out.append(e)
        return out

    def _apply(self, e: dict[str, Any]) -> None:
        if e.get("state") == "completed" and "events" in e:
            self.answers[e["ik"]] = {
                "digest": e.get("digest"),
                "events": e["events"],
                # For misbehave.cache_by only: what a wrongly keyed cache looks up.
                "correlation": e.get("correlation"),
                "action": e.get("action"),
            }

    def _load(self) -> None:
        """Build the index, and mark runs of processes that died unfinished."""
        open_runs: dict[tuple[str, Any], dict[str, Any]] = {}
        for e in self._read_new():
            self._apply(e)
            seen = self.keys_by_action.setdefault(str(e.get("action")), {})
            seen.setdefault(e["ik"], len(seen) + 1)
            run = (e["ik"], e.get("pid"))
            if e.get("state") == "started":
                open_runs[run] = e
            elif e.get("state") in ("completed", "interrupted"):
                open_runs.pop(run, None)
        marked = False
        for (ik, pid), e in open_runs.items():
            if isinstance(pid, int) and pid != self.pid and not _alive(pid):
                # An old-style cache entry means the work finished before the crash.
                old = self._legacy(ik)
                state = "interrupted" if old is None else "completed"
                self.append(ik, e.get("action"), e.get("task_id"), e.get("attempt"), state)
                marked = True
        if marked:
            _sync(self.fd)

    def refresh(self) -> None:
        """Take in what other processes appended since the last read."""
        for e in self._read_new():
            self._apply(e)

    def answer(self, ik: str) -> dict[str, Any] | None:
        found = self.answers.get(ik)
        if found is None and self.legacy_dir is not None:
            found = self._legacy(ik)
        return found

    def _legacy(self, ik: str) -> dict[str, Any] | None:
        if self.legacy_dir is None:
            return None
        try:
            with open(os.path.join(self.legacy_dir, f"{ik.removeprefix('ik:')}.json"), "rb") as f:
                data = json.loads(f.read())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and "events" in data else None

    # -- writing --------------------------------------------------------------

    def append(
        self,
        ik: str,
        action: Any,
        task_id: Any,
        attempt: Any,
        state: str,
        *,
        sync: bool = False,
        answer: dict[str, Any] | None = None,
    ) -> None:
        """Append one line; with ``sync`` it (and every line before it) is durable."""
        entry: dict[str, Any] = {
            "ik": ik,
            "action": action,
            "task_id": task_id,
            "attempt": attempt,
            "state": state,
            "pid": self.pid,
            "at": now(),
        }
        if answer is not None:
            entry.update(answer)
        data = _canonical(entry).encode() + b"\n"
        if self.torn:
            self.torn = False
            size = os.fstat(self.fd).st_size
            if size and os.pread(self.fd, 1, size - 1) != b"\n":
                data = b"\n" + data
        start = self.offset
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        end = os.lseek(self.fd, 0, os.SEEK_CUR)
        if end - len(data) == start:
            self.offset = end  # nothing unread came before it: no need to read it back
        self._apply(entry)
        if sync:
            _sync(self.fd)


def _alive(pid: int) -> bool:
    """Running, and not a zombie (a killed agent whose parent died stays one)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[-1].split()[0]
    except (OSError, IndexError):
        return True
    return state != b"Z"
