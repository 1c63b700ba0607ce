"""Crash states from the system calls that really reached the kernel (ALICE-style).

The power-loss failpoint keeps whatever lorch's own counter says is synced, so
it trusts the code under test. This module does not: it records one clean run
of a scenario under ``strace -f`` (lorch and its agents), turns the trace into
file-system operations on inodes, and derives every state a power cut could
leave on disk under a simple, documented persistence model:

- a file's data writes are durable once that file is fsynced (or fdatasynced);
  later writes may be lost, in order (a lost write loses every later write to
  the same file), and the first lost append may be torn at any byte;
- a directory's entries (create, link, rename, unlink, mkdir) are durable once
  that directory is fsynced; later entry changes may be lost, in order.

A crash point is any prefix of the recorded operations. At each, the states are:
everything written kept (as a SIGKILL leaves it), everything unsynced lost, and,
for each file or directory with unsynced operations, each number of them kept
(the others kept), with each chosen byte offset of the first lost append. The
states are deduplicated by content; each distinct one is materialized in a
fresh workspace, checked, resumed (forked from the warm server) and checked
against the baseline with the harness's invariants.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lorch import scenarios
from lorch.errors import UsageError

SYSCALLS = (
    "openat,open,creat,write,pwrite64,ftruncate,truncate,fsync,fdatasync,"
    "rename,renameat,renameat2,link,linkat,unlink,unlinkat,mkdir,mkdirat,rmdir,close"
)
_HEX = re.compile(rb'"((?:\\x[0-9a-f]{2})*)"')
_LINE = re.compile(rb"^(\d+)\s+(.*)$")
_RET = re.compile(rb"\)\s*= (?=[^)]*$)")


def strace_path() -> str:
    found = shutil.which("strace")
    if found is None:
        raise UsageError(
            "offline crash states need strace (apt-get install strace); it is not on PATH"
        )
    return found


# -- the operations ------------------------------------------------------------------


@dataclass(frozen=True)
class Op:
    """One file-system operation. ``obj`` is the file or directory it changes."""

    kind: str  # write | trunc | fsync | entry | dirsync
    obj: int  # inode (files) or directory inode (entry, dirsync)
    offset: int = 0
    data: bytes = b""
    size: int = 0
    # entry changes: (action, name, inode, other dir, other name)
    entry: tuple[str, str, int, int, str] | None = None
    pid: int = 0

    @property
    def durable_barrier(self) -> bool:
        return self.kind in ("fsync", "dirsync")


@dataclass
class Inode:
    ino: int
    is_dir: bool
    data: bytes = b""
    entries: dict[str, int] = field(default_factory=dict)


@dataclass
class Trace:
    """The initial tree (durable) and the operations recorded after it."""

    root: int
    initial: dict[int, Inode]
    ops: list[Op]
    workspace: Path  # where the recording ran (paths in the trace are under it)


def _decode_hex(raw: bytes) -> bytes:
    return bytes.fromhex(raw.replace(b"\\x", b"").decode())


def _strings(text: bytes) -> list[bytes]:
    return [_decode_hex(m.group(1)) for m in _HEX.finditer(text)]


def _fd_paths(text: bytes) -> list[bytes]:
    return [_decode_hex(m.group(1)) for m in re.finditer(rb"<((?:\\x[0-9a-f]{2})+)>", text)]


class _Namespace:
    """The volatile view while reading the trace: path → inode, fd → inode."""

    def __init__(self, ws: Path) -> None:
        self.ws = ws
        self.next = 1
        self.inodes: dict[int, Inode] = {}
        self.root = self._new(True)
        for dirpath, dirnames, filenames in os.walk(ws):
            d = self.lookup(Path(dirpath))
            assert d is not None
            for name in sorted(dirnames):
                self.inodes[d].entries[name] = self._new(True)
            for name in sorted(filenames):
                ino = self._new(False)
                self.inodes[ino].data = (Path(dirpath) / name).read_bytes()
                self.inodes[d].entries[name] = ino
        self.ipos: dict[int, int] = {}  # write position per inode (files written in order)
        self.append_inodes: set[int] = set()

    def _new(self, is_dir: bool) -> int:
        ino = self.next
        self.next += 1
        self.inodes[ino] = Inode(ino, is_dir)
        return ino

    def rel(self, path: bytes | Path) -> tuple[str, ...] | None:
        p = Path(os.fsdecode(path)) if isinstance(path, bytes) else path
        try:
            return p.relative_to(self.ws).parts
        except ValueError:
            return None

    def lookup(self, path: bytes | Path) -> int | None:
        parts = self.rel(path)
        if parts is None:
            return None
        cur = self.root
        for part in parts:
            nxt = self.inodes[cur].entries.get(part)
            if nxt is None:
                return None
            cur = nxt
        return cur

    def parent(self, path: bytes) -> tuple[int, str] | None:
        parts = self.rel(path)
        if not parts:
            return None
        d = self.lookup(self.ws.joinpath(*parts[:-1]))
        return None if d is None else (d, parts[-1])


def _abs(path: bytes, dirfd_path: bytes | None, cwd: bytes) -> bytes:
    if path.startswith(b"/"):
        return os.path.normpath(path)
    return os.path.normpath(os.path.join(dirfd_path or cwd, path))


def parse(trace_file: Path, ns: _Namespace) -> Trace:
    """Turn an ``strace -f -y -xx`` log into operations on the workspace's inodes.

    ``ns`` is the workspace as it was before the traced run (taken as durable).
    """
    ws = ns.ws
    initial = {ino: Inode(n.ino, n.is_dir, n.data, dict(n.entries)) for ino, n in ns.inodes.items()}
    ops: list[Op] = []
    pending: dict[int, bytes] = {}
    appending: set[tuple[int, int]] = set()
    cwd = os.fsencode(ws)
    for raw in trace_file.read_bytes().split(b"\n"):
        m = _LINE.match(raw)
        if not m:
            continue
        pid, body = int(m.group(1)), m.group(2)
        if body.endswith(b"<unfinished ...>"):
            pending[pid] = body[: -len(b"<unfinished ...>")]
            continue
        if body.startswith(b"<... "):
            body = pending.pop(pid, b"") + body.split(b"resumed>", 1)[-1]
        name, _, rest = body.partition(b"(")
        m = _RET.search(rest)  # strace pads short calls: ")    = 0"
        if m is None:
            continue
        args, ret = rest[: m.start()], rest[m.end() :]
        if ret.startswith(b"-1") or ret.startswith(b"?"):
            continue
        call = name.decode()
        strings = _strings(args)
        paths = _fd_paths(args)
        if call in ("openat", "open", "creat"):
            ret_paths = _fd_paths(ret)
            if not ret_paths:
                continue
            target = os.path.normpath(ret_paths[0])
            fd = int(ret.split(b"<", 1)[0])
            existing = ns.lookup(target)
            flags = args
            if existing is None and (b"O_CREAT" in flags or call == "creat"):
                where = ns.parent(target)
                if where is None:
                    continue
                existing = ns._new(b"O_DIRECTORY" in flags)
                ns.inodes[where[0]].entries[where[1]] = existing
                ops.append(
                    Op("entry", where[0], entry=("link", where[1], existing, 0, ""), pid=pid)
                )
            if existing is None:
                continue
            ns.ipos[existing] = 0
            appending.discard((pid, fd))
            if b"O_APPEND" in flags:
                appending.add((pid, fd))
                ns.append_inodes.add(existing)
            if b"O_TRUNC" in flags and ns.inodes[existing].data:
                ns.inodes[existing].data = b""
                ops.append(Op("trunc", existing, size=0, pid=pid))
            continue
        # Every fd argument carries its path (strace -y): threads share fds, so
        # the path, not (pid, fd), names the file.
        fd_ino = ns.lookup(os.path.normpath(paths[0])) if paths else None
        if call == "close":
            continue
        if call in ("write", "pwrite64"):
            ino = fd_ino
            if ino is None or ns.inodes[ino].is_dir or not strings:
                continue
            written = int(ret.split()[0])
            data = strings[0][:written]
            node = ns.inodes[ino]
            fd_num = _first_int(args) or 0
            if call == "pwrite64":
                off = int(args.rsplit(b",", 1)[-1])
            elif (pid, fd_num) in appending or ino in ns.append_inodes:
                off = len(node.data)
            else:
                off = ns.ipos.get(ino, 0)
                ns.ipos[ino] = off + len(data)
            node.data = node.data[:off].ljust(off, b"\0") + data + node.data[off + len(data) :]
            ops.append(Op("write", ino, offset=off, data=data, pid=pid))
            continue
        if call in ("fsync", "fdatasync"):
            ino = fd_ino
            if ino is None:
                continue
            ops.append(Op("dirsync" if ns.inodes[ino].is_dir else "fsync", ino, pid=pid))
            continue
        if call in ("ftruncate", "truncate"):
            ino = fd_ino if call == "ftruncate" else None
            if call == "truncate" and strings:
                ino = ns.lookup(_abs(strings[0], None, cwd))
            if ino is None:
                continue
            size = int(args.rsplit(b",", 1)[-1])
            node = ns.inodes[ino]
            node.data = node.data[:size].ljust(size, b"\0")
            ops.append(Op("trunc", ino, size=size, pid=pid))
            continue
        # Entry changes: resolve each path (dirfd-relative when given as one).
        dirfds = [p for p in paths]
        if call in ("rename", "renameat", "renameat2", "link", "linkat"):
            if len(strings) < 2:
                continue
            at = call.endswith("at") or call == "renameat2"
            src = _abs(strings[0], dirfds[0] if at and dirfds else None, cwd)
            dst = _abs(strings[1], dirfds[1] if at and len(dirfds) > 1 else None, cwd)
            s, d = ns.parent(src), ns.parent(dst)
            if s is None or d is None:
                continue
            ino = ns.inodes[s[0]].entries.get(s[1])
            if ino is None:
                continue
            ns.inodes[d[0]].entries[d[1]] = ino
            if call.startswith("rename"):
                ns.inodes[s[0]].entries.pop(s[1], None)
                ops.append(Op("entry", d[0], entry=("rename", d[1], ino, s[0], s[1]), pid=pid))
            else:
                ops.append(Op("entry", d[0], entry=("link", d[1], ino, 0, ""), pid=pid))
            continue
        if call in ("unlink", "unlinkat", "rmdir", "mkdir", "mkdirat"):
            if not strings:
                continue
            at = call.endswith("at")
            path = _abs(strings[0], dirfds[0] if at and dirfds else None, cwd)
            where = ns.parent(path)
            if where is None:
                continue
            if call.startswith("mkdir"):
                ino = ns._new(True)
                ns.inodes[where[0]].entries[where[1]] = ino
                ops.append(Op("entry", where[0], entry=("link", where[1], ino, 0, ""), pid=pid))
            else:
                ns.inodes[where[0]].entries.pop(where[1], None)
                ops.append(Op("entry", where[0], entry=("unlink", where[1], 0, 0, ""), pid=pid))
    return Trace(ns.root, initial, ops, ws)


def _first_int(args: bytes) -> int | None:
    m = re.match(rb"\s*(-?\d+)", args)
    return int(m.group(1)) if m else None


def record(scenario_ref: str | Path, env: dict[str, str], workdir: Path) -> Trace:
    """Run the scenario once under strace; return its operations."""
    ws = workdir / "ws"
    scenarios.materialize(scenarios.resolve(scenario_ref), ws)
    log = workdir / "strace.log"
    before = _Namespace(ws)
    argv = [
        strace_path(),
        "-f",
        "-qq",
        "-y",
        "-xx",
        "-s",
        str(1 << 24),
        "-e",
        f"trace={SYSCALLS}",
        "-e",
        "signal=none",
        "-o",
        str(log),
        *_lorch(),
        "run",
        "--workspace",
        str(ws),
    ]
    proc = subprocess.run(
        argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, timeout=300, cwd=ws
    )
    if proc.returncode not in (0, 1):
        raise UsageError(
            f"recording the scenario under strace failed (exit {proc.returncode}): "
            f"{proc.stderr.decode('utf-8', 'replace').strip().splitlines()[-1:]}"
        )
    return parse(log, before)


def _lorch() -> list[str]:
    import sys

    return [sys.executable, "-m", "lorch"]


# -- the crash states ----------------------------------------------------------------


@dataclass(frozen=True)
class Cut:
    """A crash state: after ``prefix`` operations, with some unsynced ones lost.

    ``keep`` maps an object to how many of its unsynced operations survive
    (absent: all survive); ``torn`` keeps only that many bytes of the first lost
    write of ``torn_obj``.
    """

    prefix: int
    keep: tuple[tuple[int, int], ...] = ()
    torn_obj: int = 0
    torn: int = 0

    def describe(self, trace: Trace) -> str:
        parts = [f"after op {self.prefix}/{len(trace.ops)}"]
        if self.keep == ((-1, 0),):
            parts.append("every unsynced op lost")
        for obj, k in self.keep:
            if obj >= 0:
                parts.append(f"inode {obj}: {k} unsynced op(s) kept")
        if self.torn_obj:
            parts.append(f"then {self.torn} bytes of the next")
        return ", ".join(parts)


def unsynced(trace: Trace, prefix: int) -> dict[int, list[int]]:
    """For each object, the indices (< prefix) of its operations not yet durable."""
    out: dict[int, list[int]] = {}
    for i in range(prefix):
        op = trace.ops[i]
        if op.kind == "fsync":
            out.pop(op.obj, None)
        elif op.kind == "dirsync":
            out.pop(-op.obj, None)
        elif op.kind in ("write", "trunc"):
            out.setdefault(op.obj, []).append(i)
        elif op.kind == "entry":
            out.setdefault(-op.obj, []).append(i)  # directories as negative ids
    return out


def cuts(trace: Trace, torn_bytes: str = "edges") -> Iterator[Cut]:
    """Every crash state the model allows (before deduplication)."""
    for prefix in range(len(trace.ops) + 1):
        vol = unsynced(trace, prefix)
        yield Cut(prefix)
        if not vol:
            continue
        yield Cut(prefix, ((-1, 0),))
        for obj, idx in sorted(vol.items()):
            for k in range(len(idx)):
                yield Cut(prefix, ((obj, k),))
                op = trace.ops[idx[k]]
                if op.kind == "write" and len(op.data) > 1:
                    n = len(op.data)
                    offsets = range(1, n) if torn_bytes == "all" else sorted({1, n // 2, n - 1})
                    for b in offsets:
                        yield Cut(prefix, ((obj, k),), obj, b)


def materialize(trace: Trace, cut: Cut) -> dict[str, bytes | None]:
    """The files (relative path → bytes; None for a directory) the cut leaves."""
    vol = unsynced(trace, cut.prefix)
    lost: set[int] = set()
    torn_at: dict[int, int] = {}
    keep = dict(cut.keep)
    for obj, idx in vol.items():
        k = len(idx)
        if -1 in keep:
            k = 0
        elif obj in keep:
            k = keep[obj]
        lost.update(idx[k:])
        if cut.torn_obj == obj and k < len(idx):
            torn_at[idx[k]] = cut.torn
    nodes = {
        ino: Inode(n.ino, n.is_dir, n.data, dict(n.entries)) for ino, n in trace.initial.items()
    }
    for i in range(cut.prefix):
        op = trace.ops[i]
        if i in lost and i not in torn_at:
            continue
        if op.kind in ("fsync", "dirsync"):
            continue
        node = nodes.get(op.obj)
        if op.kind == "write":
            if node is None:
                node = nodes[op.obj] = Inode(op.obj, False)
            data = op.data[: torn_at[i]] if i in torn_at else op.data
            node.data = (
                node.data[: op.offset].ljust(op.offset, b"\0")
                + data
                + node.data[op.offset + len(data) :]
            )
        elif op.kind == "trunc":
            if node is None:
                node = nodes[op.obj] = Inode(op.obj, False)
            node.data = node.data[: op.size].ljust(op.size, b"\0")
        elif op.kind == "entry":
            assert op.entry is not None
            action, name, ino, other_dir, other_name = op.entry
            if node is None:
                node = nodes[op.obj] = Inode(op.obj, True)
            if action == "unlink":
                node.entries.pop(name, None)
                continue
            if ino not in nodes:
                is_dir = any(o.kind == "entry" and o.obj == ino for o in trace.ops) or _made_as_dir(
                    trace, ino
                )
                nodes[ino] = Inode(ino, is_dir)
            node.entries[name] = ino
            if action == "rename":
                src = nodes.get(other_dir)
                if src is not None and src.entries.get(other_name) == ino:
                    del src.entries[other_name]
    out: dict[str, bytes | None] = {}

    def walk(ino: int, prefix: str, depth: int) -> None:
        node = nodes[ino]
        for name, child in sorted(node.entries.items()):
            c = nodes.get(child)
            rel = f"{prefix}{name}"
            if c is None or depth > 40:
                continue
            if c.is_dir:
                out[rel] = None
                walk(child, rel + "/", depth + 1)
            else:
                out[rel] = c.data

    walk(trace.root, "", 0)
    return out


def _made_as_dir(trace: Trace, ino: int) -> bool:
    return any(op.kind == "dirsync" and op.obj == ino for op in trace.ops)


def digest(files: dict[str, bytes | None]) -> str:
    h = hashlib.sha256()
    for rel, data in sorted(files.items()):
        h.update(rel.encode() + b"\0" + (b"/" if data is None else hashlib.sha256(data).digest()))
    return h.hexdigest()


def write_state(files: dict[str, bytes | None], ws: Path) -> None:
    ws.mkdir(parents=True)
    for rel, data in sorted(files.items()):
        p = ws / rel
        if data is None:
            p.mkdir(parents=True, exist_ok=True)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            os.chmod(p, 0o600)


def distinct_states(trace: Trace, torn_bytes: str = "edges") -> tuple[int, list[Cut]]:
    """(cuts enumerated, one cut per distinct state, in order)."""
    n, out, _ = counted_states(trace, torn_bytes)
    return n, out


def counted_states(
    trace: Trace, torn_bytes: str = "edges"
) -> tuple[int, list[Cut], dict[Cut, int]]:
    """:func:`distinct_states`, with how many enumerated cuts each one stands for.

    Cuts that leave byte-identical files (names, contents, directories) give
    resume the same input, so one exploration answers for all of them.
    """
    seen: dict[str, Cut] = {}
    covers: dict[Cut, int] = {}
    out: list[Cut] = []
    n = 0
    for cut in cuts(trace, torn_bytes):
        n += 1
        d = digest(materialize(trace, cut))
        first = seen.get(d)
        if first is None:
            seen[d] = first = cut
            out.append(cut)
        covers[first] = covers.get(first, 0) + 1
    return n, out, covers


_RECEIPT = re.compile(r"^receipts/[^/]+/step-\d+\.json$")


def receipt_rewrites(trace: Trace) -> list[tuple[int, str]]:
    """Operations of the trace that could destroy a receipt: (op index, what).

    A receipt is write-once, so its name must be created exclusively (a link
    of a finished temp file, which fails on a taken name). A rename onto a
    receipt name replaces whatever the name held, a write to a receipt already
    in place changes it, an unlink removes it: each is reported, whether or not
    the name happened to be free in the recorded run (single-writer outcomes
    cannot tell a replacing create from an exclusive one; the call can).
    """
    paths: dict[int, str] = {trace.root: ""}
    stack = [trace.root]
    while stack:
        ino = stack.pop()
        for name, child in trace.initial[ino].entries.items():
            node = trace.initial.get(child)
            if node is not None and node.is_dir:
                paths[child] = f"{paths[ino]}{name}/"
                stack.append(child)
    dirs = {op.obj for op in trace.ops if op.kind in ("entry", "dirsync")}
    placed: dict[int, str] = {}
    out: list[tuple[int, str]] = []
    for i, op in enumerate(trace.ops):
        if op.kind in ("write", "trunc") and op.obj in placed:
            out.append((i, f"{placed[op.obj]} was written after it was in place"))
            continue
        if op.kind != "entry" or op.entry is None:
            continue
        action, name, ino, _, _ = op.entry
        base = paths.get(op.obj)
        if base is None:
            continue
        rel = base + name
        if ino in dirs and action != "unlink":
            paths[ino] = rel + "/"
        if not _RECEIPT.match(rel):
            continue
        if action == "rename":
            out.append((i, f"{rel} was put in place by a rename, which replaces a taken name"))
        elif action == "unlink":
            out.append((i, f"{rel} was removed"))
        else:
            placed[ino] = rel
    return out


# -- exploring them ------------------------------------------------------------------

_PID = re.compile(rb'("(?:pid|pgid)":\s*)(\d+)')


def disarm_pids(files: dict[str, bytes | None], recorded: set[int]) -> None:
    """Point the recorded agents' pids at the harness itself.

    The recording run's agents are long gone and their pids may belong to any
    process by now (every agent leads its own group, so a recycled pid can pass
    resume's pid-and-group check). With the harness's own pid and the old group,
    the check fails for sure and resume kills nothing.
    """
    me = str(os.getpid()).encode()
    for rel, data in files.items():
        if data is None or not (rel.startswith("events/") or rel.startswith("state/")):
            continue
        files[rel] = _PID.sub(
            lambda m: (
                m.group(1)
                + (
                    me
                    if m.group(1).startswith(b'"pid"') and int(m.group(2)) in recorded
                    else m.group(2)
                )
            ),
            data,
        )


def agent_pids(trace: Trace) -> set[int]:
    """Every pid (and thread id) seen in the trace: lorch's and its agents'."""
    return {op.pid for op in trace.ops}


def order(trace: Trace, states: list[Cut]) -> list[Cut]:
    """Cheapest-first is not the point: the states where everything unsynced is
    lost or kept come first (what a power cut and a kill leave), then the rest."""
    head = [c for c in states if not c.keep or c.keep == ((-1, 0),)]
    chosen = set(head)
    return head + [c for c in states if c not in chosen]


@dataclass
class Offline:
    trace: Trace
    enumerated: int
    states: list[Cut]
    seconds_enumerating: float
    chosen: list[int]  # numbers (1-based) of the states to explore; numbering is of all
    # Operations that could destroy a receipt (receipt_rewrites), found once per trace.
    rewrites: list[tuple[int, str]] = field(default_factory=list)
    # For each distinct state, how many enumerated cuts leave exactly its files.
    covers: dict[Cut, int] = field(default_factory=dict)

    def covered(self, numbers: list[int]) -> int:
        """Enumerated states answered by exploring the given distinct states."""
        return sum(self.covers.get(self.states[k - 1], 1) for k in numbers)


CUTS = ("all", "lost")


def prepare(
    scenario_ref: str | Path,
    env: dict[str, str],
    workdir: Path,
    torn_bytes: str = "edges",
    which: str = "all",
) -> Offline:
    """Record the scenario under strace and enumerate its distinct crash states.

    ``which="lost"`` keeps only the states where every unsynced operation is
    lost (the strictest power cut at each prefix): a quick first pass.
    """
    import time

    trace = record(scenario_ref, env, workdir)
    started = time.monotonic()
    n, distinct, covers = counted_states(trace, torn_bytes)
    states = order(trace, distinct)
    chosen = [i for i, c in enumerate(states, start=1) if which == "all" or c.keep == ((-1, 0),)]
    return Offline(
        trace, n, states, time.monotonic() - started, chosen, receipt_rewrites(trace), covers
    )


def materialize_state(off: Offline, k: int, ws: Path) -> Cut:
    """Write state ``k`` (1-based) into ``ws``; return its cut."""
    cut = off.states[k - 1]
    files = materialize(off.trace, cut)
    disarm_pids(files, agent_pids(off.trace))
    write_state(files, ws)
    return cut
