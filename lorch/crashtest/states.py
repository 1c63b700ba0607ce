"""The crash states a recorded trace allows, under a simple persistence model.

- a file's data writes are durable once that file is fsynced (or fdatasynced);
  later writes may be lost, in order (a lost write loses every later write to
  the same file), and the first lost append may be torn at any byte;
- a directory's entries (create, link, rename, unlink, mkdir) are durable once
  that directory is fsynced; later entry changes may be lost, in order.

A crash point is any prefix of the recorded operations. At each, the states are:
everything written kept (as a SIGKILL leaves it), everything unsynced lost, and,
for each file or directory with unsynced operations, each number of them kept
(the others kept), with each chosen byte offset of the first lost append. A
state is a :class:`Cut`; :func:`materialize` gives the files it leaves, and the
states are deduplicated by those files' content.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

from lorch.crashtest.strace import Inode, Op, Trace


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


def _losses(trace: Trace, cut: Cut) -> tuple[set[int], dict[int, int]]:
    """The operations the cut loses, and the torn one's kept bytes (op index → bytes)."""
    lost: set[int] = set()
    torn_at: dict[int, int] = {}
    keep = dict(cut.keep)
    for obj, idx in unsynced(trace, cut.prefix).items():
        k = len(idx)
        if -1 in keep:
            k = 0
        elif obj in keep:
            k = keep[obj]
        lost.update(idx[k:])
        if cut.torn_obj == obj and k < len(idx):
            torn_at[idx[k]] = cut.torn
    return lost, torn_at


def materialize(trace: Trace, cut: Cut) -> dict[str, bytes | None]:
    """The files (relative path → bytes; None for a directory) the cut leaves."""
    lost, torn_at = _losses(trace, cut)
    nodes = {
        ino: Inode(n.ino, n.is_dir, n.data, dict(n.entries)) for ino, n in trace.initial.items()
    }
    for i in range(cut.prefix):
        op = trace.ops[i]
        if (i in lost and i not in torn_at) or op.durable_barrier:
            continue
        if op.kind == "entry":
            _apply_entry(trace, nodes, op)
        else:
            _apply_data(nodes, op, torn_at.get(i))
    return _files(nodes, trace.root)


def _apply_data(nodes: dict[int, Inode], op: Op, torn: int | None) -> None:
    """A write (only its first ``torn`` bytes, when torn) or a truncate of a file."""
    node = nodes.get(op.obj)
    if node is None:
        node = nodes[op.obj] = Inode(op.obj, False)
    if op.kind == "trunc":
        node.data = node.data[: op.size].ljust(op.size, b"\0")
        return
    data = op.data if torn is None else op.data[:torn]
    node.data = (
        node.data[: op.offset].ljust(op.offset, b"\0") + data + node.data[op.offset + len(data) :]
    )


def _apply_entry(trace: Trace, nodes: dict[int, Inode], op: Op) -> None:
    """A directory entry change: a name linked, renamed into place or removed."""
    assert op.entry is not None
    action, name, ino, other_dir, other_name = op.entry
    node = nodes.get(op.obj)
    if node is None:
        node = nodes[op.obj] = Inode(op.obj, True)
    if action == "unlink":
        node.entries.pop(name, None)
        return
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


def _made_as_dir(trace: Trace, ino: int) -> bool:
    return any(op.kind == "dirsync" and op.obj == ino for op in trace.ops)


def _files(nodes: dict[int, Inode], root: int) -> dict[str, bytes | None]:
    """Every path reachable from the root, with its bytes (None for a directory)."""
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

    walk(root, "", 0)
    return out


def digest(files: dict[str, bytes | None]) -> str:
    h = hashlib.sha256()
    for rel, data in sorted(files.items()):
        h.update(rel.encode() + b"\0" + (b"/" if data is None else hashlib.sha256(data).digest()))
    return h.hexdigest()


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


def order(trace: Trace, states: list[Cut]) -> list[Cut]:
    """Cheapest-first is not the point: the states where everything unsynced is
    lost or kept come first (what a power cut and a kill leave), then the rest."""
    head = [c for c in states if not c.keep or c.keep == ((-1, 0),)]
    chosen = set(head)
    return head + [c for c in states if c not in chosen]
