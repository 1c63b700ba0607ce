"""One clean run recorded under ``strace -f``, turned into file-system operations.

:func:`record` runs the scenario once under strace (lorch and its agents);
:func:`parse` reads the log back into :class:`Op` values on inodes: data writes,
truncates, fsyncs of a file, directory entry changes (create, link, rename,
unlink, mkdir) and fsyncs of a directory. The workspace as it was before the run
is the durable start (:class:`Trace`.initial). Replaying every operation gives
exactly the workspace the run left.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from lorch.app import scenarios
from lorch.crashtest.launcher import lorch_argv
from lorch.wire.errors import UsageError

SYSCALLS = (
    "openat,open,creat,write,pwrite64,ftruncate,truncate,fsync,fdatasync,"
    "rename,renameat,renameat2,link,linkat,unlink,unlinkat,mkdir,mkdirat,rmdir,close,"
    # Which processes are bubblewrap setting a sandbox up (lorch/agents/sandbox.py): what
    # they create is in a mount namespace of their own, not in the workspace.
    "execve,clone,clone3,fork,vfork"
)
_SPAWN = ("clone", "clone3", "fork", "vfork")
_HEX = re.compile(rb'"((?:\\x[0-9a-f]{2})*)"')
_LINE = re.compile(rb"^(\d+)\s+(.*)$")
_RET = re.compile(rb"\)\s*= (?=[^)]*$)")
_UNFINISHED = b"<unfinished ...>"


def strace_path() -> str:
    found = shutil.which("strace")
    if found is None:
        raise UsageError(
            "offline crash states need strace (apt-get install strace); it is not on PATH"
        )
    return found


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


def _first_int(args: bytes) -> int | None:
    m = re.match(rb"\s*(-?\d+)", args)
    return int(m.group(1)) if m else None


def _abs(path: bytes, dirfd_path: bytes | None, cwd: bytes) -> bytes:
    if path.startswith(b"/"):
        return os.path.normpath(path)
    return os.path.normpath(os.path.join(dirfd_path or cwd, path))


class Namespace:
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


@dataclass(frozen=True)
class _Call:
    """One system call of the log that succeeded: its name, raw arguments and result."""

    pid: int
    name: str
    args: bytes
    ret: bytes


def _calls(log: bytes) -> Iterator[_Call]:
    """The successful calls of an ``strace -f`` log, each in one piece (a call
    another thread interrupted is logged ``<unfinished ...>``, then resumed)."""
    pending: dict[int, bytes] = {}
    for raw in log.split(b"\n"):
        m = _LINE.match(raw)
        if not m:
            continue
        pid, body = int(m.group(1)), m.group(2)
        if body.endswith(_UNFINISHED):
            pending[pid] = body[: -len(_UNFINISHED)]
            continue
        if body.startswith(b"<... "):
            body = pending.pop(pid, b"") + body.split(b"resumed>", 1)[-1]
        name, _, rest = body.partition(b"(")
        m = _RET.search(rest)  # strace pads short calls: ")    = 0"
        if m is None:
            continue
        ret = rest[m.end() :]
        if ret.startswith(b"-1") or ret.startswith(b"?"):
            continue
        yield _Call(pid, name.decode(), rest[: m.start()], ret)


class _Reader:
    """Turns each call into operations, keeping the namespace as the run saw it."""

    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.ops: list[Op] = []
        self.appending: set[tuple[int, int]] = set()  # (pid, fd) opened O_APPEND
        self.cwd = os.fsencode(ns.ws)
        # bwrap's processes, until they exec the sandboxed program: ignored.
        self.sandboxing: set[int] = set()

    def read(self, call: _Call) -> None:
        if call.name in _SPAWN:
            # The child's pid as lorch's namespace sees it (a clone into a new PID
            # namespace returns that; one inside it returns the inner pid: such a
            # child of bwrap's is known by its execve of the sandboxed program).
            child = call.ret.split()[0] if call.ret.split() else b""
            if call.pid in self.sandboxing and child.isdigit():
                self.sandboxing.add(int(child))
            return
        if call.name == "execve":
            m = _HEX.search(call.args)
            program = _decode_hex(m.group(1)) if m else b""
            if program.endswith(b"/bwrap"):
                self.sandboxing.add(call.pid)
            else:
                self.sandboxing.discard(call.pid)
            return
        if call.pid in self.sandboxing:
            return
        handler = _HANDLERS.get(call.name)
        if handler is not None:
            handler(self, call)

    def fd_inode(self, call: _Call) -> int | None:
        # Every fd argument carries its path (strace -y): threads share fds, so
        # the path, not (pid, fd), names the file.
        paths = _fd_paths(call.args)
        return self.ns.lookup(os.path.normpath(paths[0])) if paths else None

    def link(self, call: _Call, where: tuple[int, str], ino: int) -> None:
        self.ns.inodes[where[0]].entries[where[1]] = ino
        self.ops.append(Op("entry", where[0], entry=("link", where[1], ino, 0, ""), pid=call.pid))

    def open(self, call: _Call) -> None:
        ns, flags = self.ns, call.args
        ret_paths = _fd_paths(call.ret)
        if not ret_paths:
            return
        target = os.path.normpath(ret_paths[0])
        fd = int(call.ret.split(b"<", 1)[0])
        existing = ns.lookup(target)
        if existing is None and (b"O_CREAT" in flags or call.name == "creat"):
            where = ns.parent(target)
            if where is None:
                return
            existing = ns._new(b"O_DIRECTORY" in flags)
            self.link(call, where, existing)
        if existing is None:
            return
        ns.ipos[existing] = 0
        self.appending.discard((call.pid, fd))
        if b"O_APPEND" in flags:
            self.appending.add((call.pid, fd))
            ns.append_inodes.add(existing)
        if b"O_TRUNC" in flags and ns.inodes[existing].data:
            ns.inodes[existing].data = b""
            self.ops.append(Op("trunc", existing, size=0, pid=call.pid))

    def write(self, call: _Call) -> None:
        ns, args = self.ns, call.args
        ino = self.fd_inode(call)
        strings = _strings(args)
        if ino is None or ns.inodes[ino].is_dir or not strings:
            return
        data = strings[0][: int(call.ret.split()[0])]
        node = ns.inodes[ino]
        fd_num = _first_int(args) or 0
        if call.name == "pwrite64":
            off = int(args.rsplit(b",", 1)[-1])
        elif (call.pid, fd_num) in self.appending or ino in ns.append_inodes:
            off = len(node.data)
        else:
            off = ns.ipos.get(ino, 0)
            ns.ipos[ino] = off + len(data)
        node.data = node.data[:off].ljust(off, b"\0") + data + node.data[off + len(data) :]
        self.ops.append(Op("write", ino, offset=off, data=data, pid=call.pid))

    def sync(self, call: _Call) -> None:
        ino = self.fd_inode(call)
        if ino is not None:
            kind = "dirsync" if self.ns.inodes[ino].is_dir else "fsync"
            self.ops.append(Op(kind, ino, pid=call.pid))

    def truncate(self, call: _Call) -> None:
        ino = self.fd_inode(call) if call.name == "ftruncate" else None
        strings = _strings(call.args)
        if call.name == "truncate" and strings:
            ino = self.ns.lookup(_abs(strings[0], None, self.cwd))
        if ino is None:
            return
        size = int(call.args.rsplit(b",", 1)[-1])
        node = self.ns.inodes[ino]
        node.data = node.data[:size].ljust(size, b"\0")
        self.ops.append(Op("trunc", ino, size=size, pid=call.pid))

    def rename_or_link(self, call: _Call) -> None:
        # Each path resolved against its dirfd when the call takes one.
        strings, dirfds = _strings(call.args), _fd_paths(call.args)
        if len(strings) < 2:
            return
        at = call.name.endswith("at") or call.name == "renameat2"
        src = _abs(strings[0], dirfds[0] if at and dirfds else None, self.cwd)
        dst = _abs(strings[1], dirfds[1] if at and len(dirfds) > 1 else None, self.cwd)
        s, d = self.ns.parent(src), self.ns.parent(dst)
        if s is None or d is None:
            return
        ino = self.ns.inodes[s[0]].entries.get(s[1])
        if ino is None:
            return
        if not call.name.startswith("rename"):
            self.link(call, d, ino)
            return
        self.ns.inodes[d[0]].entries[d[1]] = ino
        self.ns.inodes[s[0]].entries.pop(s[1], None)
        self.ops.append(Op("entry", d[0], entry=("rename", d[1], ino, s[0], s[1]), pid=call.pid))

    def unlink_or_mkdir(self, call: _Call) -> None:
        strings, dirfds = _strings(call.args), _fd_paths(call.args)
        if not strings:
            return
        at = call.name.endswith("at")
        where = self.ns.parent(_abs(strings[0], dirfds[0] if at and dirfds else None, self.cwd))
        if where is None:
            return
        if call.name.startswith("mkdir"):
            self.link(call, where, self.ns._new(True))
            return
        self.ns.inodes[where[0]].entries.pop(where[1], None)
        self.ops.append(Op("entry", where[0], entry=("unlink", where[1], 0, 0, ""), pid=call.pid))


_HANDLERS: dict[str, Callable[[_Reader, _Call], None]] = {
    **dict.fromkeys(("openat", "open", "creat"), _Reader.open),
    **dict.fromkeys(("write", "pwrite64"), _Reader.write),
    **dict.fromkeys(("fsync", "fdatasync"), _Reader.sync),
    **dict.fromkeys(("ftruncate", "truncate"), _Reader.truncate),
    **dict.fromkeys(("rename", "renameat", "renameat2", "link", "linkat"), _Reader.rename_or_link),
    **dict.fromkeys(("unlink", "unlinkat", "rmdir", "mkdir", "mkdirat"), _Reader.unlink_or_mkdir),
}  # close changes nothing on disk


def parse(trace_file: Path, ns: Namespace) -> Trace:
    """Turn an ``strace -f -y -xx`` log into operations on the workspace's inodes.

    ``ns`` is the workspace as it was before the traced run (taken as durable).
    """
    initial = {ino: Inode(n.ino, n.is_dir, n.data, dict(n.entries)) for ino, n in ns.inodes.items()}
    reader = _Reader(ns)
    for call in _calls(trace_file.read_bytes()):
        reader.read(call)
    return Trace(ns.root, initial, reader.ops, ns.ws)


def record(scenario_ref: str | Path, env: dict[str, str], workdir: Path) -> Trace:
    """Run the scenario once under strace; return its operations."""
    ws = workdir / "ws"
    scenarios.materialize(scenarios.resolve(scenario_ref), ws)
    log = workdir / "strace.log"
    before = Namespace(ws)
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
        *lorch_argv(),
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
