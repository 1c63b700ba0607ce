"""Checksums, atomic files, path safety, snapshots, receipts, run state, index."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from lorch.store import derived_files as store
from lorch.store import snapshot
from lorch.store.atomic import (
    atomic_create_bytes,
    atomic_write_bytes,
    atomic_write_json,
    ensure_dir,
)
from lorch.store.paths import safe_relpath
from lorch.wire import schemas
from lorch.wire.checksum import is_checksum, sha256_bytes, sha256_file
from lorch.wire.errors import PathEscape, SchemaError, StorageError


def test_sha256_file_streams_and_matches_hashlib(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 17)
    p = tmp_path / "f"
    p.write_bytes(data)
    assert sha256_file(p) == ("sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    assert sha256_bytes(b"") == "sha256:" + hashlib.sha256(b"").hexdigest()
    assert is_checksum(sha256_bytes(b"x")) and not is_checksum("sha256:XYZ")


@pytest.mark.parametrize("size", [0, 1, 700, (1 << 20) - 1, 1 << 20, (1 << 20) + 1])
def test_sha256_file_at_the_edges_of_its_buffer(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    p = tmp_path / "f"
    p.write_bytes(data)
    assert sha256_file(p) == ("sha256:" + hashlib.sha256(data).hexdigest(), size)


def test_atomic_write_modes_and_content(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "file.json"
    atomic_write_json(target, {"x": 1})
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o700
    atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["file.json"]


def test_failed_write_keeps_old_content_and_removes_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "f"
    atomic_write_bytes(target, b"old")

    def broken_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(StorageError, match="No space left"):
        atomic_write_bytes(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_atomic_create_never_overwrites(tmp_path: Path) -> None:
    target = tmp_path / "step-1.json"
    assert atomic_create_bytes(target, b"first")
    assert not atomic_create_bytes(target, b"second")
    assert target.read_bytes() == b"first"
    assert [p.name for p in tmp_path.iterdir()] == ["step-1.json"]


def test_ensure_dir_is_0700(tmp_path: Path) -> None:
    d = ensure_dir(tmp_path / "x" / "y")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "", "a/\x00b"])
def test_unsafe_paths_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(PathEscape):
        safe_relpath(tmp_path, bad)


def test_symlink_escape_is_refused(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (tmp_path / "outside").mkdir()
    (ws / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(PathEscape, match="outside the workspace"):
        safe_relpath(ws, "link/secret.txt")
    (ws / "src").mkdir()
    assert safe_relpath(ws, "src/ok.py") == ws.resolve() / "src" / "ok.py"
    # The file itself a link out, deeper down: refused too.
    (tmp_path / "outside" / "secret.txt").write_text("s")
    (ws / "src" / "leak.txt").symlink_to(tmp_path / "outside" / "secret.txt")
    with pytest.raises(PathEscape, match="outside the workspace"):
        safe_relpath(ws, "src/leak.txt")
    # A link that stays inside the workspace is fine.
    (ws / "alias").symlink_to(ws / "src")
    assert safe_relpath(ws, "alias/ok.py") == ws.resolve() / "alias" / "ok.py"


def _tree(root: Path) -> None:
    (root / "src").mkdir(parents=True)
    (root / "src" / "a.py").write_text("a")
    (root / "a.txt").write_text("top")
    (root / "src" / "b").mkdir()
    (root / "src" / "b" / "c.py").write_text("c")
    for excluded in (".git", "node_modules", ".hidden", "events", "state", "receipts", "logs"):
        (root / excluded).mkdir()
        (root / excluded / "x").write_text("ignored")
    (root / ".env").write_text("ignored")


def test_snapshot_order_exclusions_and_id(tmp_path: Path) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    _tree(one)
    _tree(two)
    m1 = snapshot.manifest(one)
    assert [f["path"] for f in m1["files"]] == ["a.txt", "src/a.py", "src/b/c.py"]
    assert snapshot.manifest(two)["snapshot_id"] == m1["snapshot_id"]
    os.utime(two / "a.txt", (1, 1))
    assert snapshot.manifest(two)["snapshot_id"] == m1["snapshot_id"]
    (two / "src" / "a.py").write_text("A")
    assert snapshot.manifest(two)["snapshot_id"] != m1["snapshot_id"]
    schemas.validate("snapshot-manifest", m1)
    taken = snapshot.take(one)
    assert (one / "snapshots" / f"{taken['snapshot_id']}.manifest.json").exists()
    # The manifest itself sits in an excluded dir: taking it changes nothing.
    assert snapshot.manifest(one)["snapshot_id"] == m1["snapshot_id"]


RECEIPT = {
    "run_id": "run-20261124-120000-0123abcd",
    "task_id": "T-0042",
    "action": "implement",
    "agent_type": "builder",
    "idempotency_key": "ik:" + "a" * 64,
    "correlation_id": "corr-T-0042-1",
    "command_message_id": "cmd-1",
    "snapshot_id": "snap-0123456789ab",
    "terminal_event": "builder.completed",
    "event_ids": ["evt-1"],
    "artifacts": [],
    "completed_at": "2026-11-24T12:00:00Z",
}


def test_receipt_steps_are_never_reused(tmp_path: Path) -> None:
    p1, s1 = store.write_receipt(tmp_path, dict(RECEIPT))
    p2, s2 = store.write_receipt(tmp_path, {**RECEIPT, "idempotency_key": "ik:" + "b" * 64})
    assert (s1, s2) == (1, 2)
    p1.unlink()  # even if an earlier step disappears, numbers only go up
    _, s3 = store.write_receipt(tmp_path, {**RECEIPT, "idempotency_key": "ik:" + "c" * 64})
    assert s3 == 3
    assert store.find_receipt(tmp_path, "T-0042", RECEIPT["run_id"], "ik:" + "b" * 64) == p2
    assert stat.S_IMODE(p2.stat().st_mode) == 0o600


def test_invalid_receipt_is_refused_and_nothing_written(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match=r"\$\.idempotency_key"):
        store.write_receipt(tmp_path, {**RECEIPT, "idempotency_key": "nope"})
    assert not list((tmp_path / "receipts" / "T-0042").glob("step-*"))


def test_index_keeps_other_runs(tmp_path: Path) -> None:
    entry = {
        "run_id": "run-20261124-120000-0123abcd",
        "task_id": "T-0042",
        "status": "running",
        "started_at": "2026-11-24T12:00:00Z",
        "updated_at": "2026-11-24T12:00:00Z",
        "ledger": "events/run-20261124-120000-0123abcd.ndjson",
    }
    store.update_index(tmp_path, entry)
    other = {
        **entry,
        "run_id": "run-20261124-130000-0123abce",
        "started_at": "2026-11-24T13:00:00Z",
    }
    store.update_index(tmp_path, other)
    store.update_index(tmp_path, {**entry, "status": "completed"})
    runs = store.read_index(tmp_path)["runs"]
    assert [(r["run_id"][-8:], r["status"]) for r in runs] == [
        ("0123abcd", "completed"),
        ("0123abce", "running"),
    ]


def test_atomic_create_many_keeps_taken_names_and_leaves_no_temp_files(tmp_path: Path) -> None:
    from lorch.store.atomic import atomic_create_many

    d = tmp_path / "receipts"
    d.mkdir()
    (d / "step-2.json").write_text("first")
    items = [(d / f"step-{i}.json", f"body {i}".encode()) for i in (1, 2, 3)]
    assert atomic_create_many(items) == [True, False, True]
    assert (d / "step-2.json").read_text() == "first"  # never overwritten
    assert (d / "step-3.json").read_text() == "body 3"
    assert sorted(p.name for p in d.iterdir()) == ["step-1.json", "step-2.json", "step-3.json"]
    assert oct((d / "step-1.json").stat().st_mode & 0o777) == oct(0o600)


def test_receipt_batch_skips_a_taken_step_number(tmp_path: Path) -> None:
    from lorch.core.state import Pending
    from lorch.engine.derived import ReceiptWriter

    def pending(i: int) -> Pending:
        cmd = {
            "task_id": "T-1",
            "action": "review",
            "to": {"agent_type": "reviewer"},
            "idempotency_key": "ik:" + f"{i:064x}",
            "correlation_id": f"c-{i}",
            "message_id": f"cmd-{i}",
        }
        ev = {"event": "review.completed", "status": "approved", "message_id": f"evt-{i}"}
        return Pending(cmd, ev, [f"evt-{i}"])

    writer = ReceiptWriter(tmp_path, "run-20260101-000000-0123abcd", "T-1")
    d = tmp_path / "receipts" / "T-1"
    d.mkdir(parents=True)
    (d / "step-2.json").write_text("{}")  # taken after the writer looked
    snap = "snap-0123456789ab"
    writer.write_batch([(pending(i), snap) for i in (1, 2, 3)])
    keys = {
        json.loads(p.read_text()).get("idempotency_key"): p.name
        for p in d.glob("step-*.json")
        if p.name != "step-2.json"
    }
    assert sorted(keys.values()) == ["step-1.json", "step-3.json", "step-4.json"]
    assert keys["ik:" + f"{2:064x}"] == "step-4.json"
