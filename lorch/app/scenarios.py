"""Bundled scenarios: workspace templates with an expected outcome (docs/decisions.md D5)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from lorch.store.atomic import FILE_MODE, ensure_dir
from lorch.wire.errors import StorageError, UsageError
from lorch.wire.resources import scenario_names, scenarios_dir

META = "scenario.json"


def resolve(name_or_path: str | Path) -> Path:
    """A bundled scenario's folder by name, or a folder given by path."""
    p = Path(name_or_path)
    if (p / META).is_file():
        return p.resolve()
    bundled = scenarios_dir() / str(name_or_path)
    if "/" not in str(name_or_path) and (bundled / META).is_file():
        return bundled
    known = ", ".join(scenario_names())
    raise UsageError(
        f"unknown scenario {str(name_or_path)!r}: not a folder with {META}; known: {known}"
    )


def load(name_or_path: str | Path) -> dict[str, Any]:
    path = resolve(name_or_path) / META
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise UsageError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: expected a JSON object")
    return data


def materialize(name_or_path: str | Path, workspace: Path) -> dict[str, Any]:
    """Copy the scenario's template into ``workspace``; return its scenario.json.

    What lorch creates is private whatever the umask or the template's modes:
    directories 0700, files 0600, or 0700 for a file that was executable (a
    scenario's own agent script must still run).
    """
    src = resolve(name_or_path)
    meta = load(src)
    ensure_dir(workspace)
    for entry in sorted(src.iterdir()):
        if entry.name == META or entry.name == "__pycache__":
            continue
        _copy(entry, workspace / entry.name)
    return meta


def _copy(src: Path, target: Path) -> None:
    if src.is_dir():
        ensure_dir(target)
        for entry in sorted(src.iterdir()):
            if entry.name != "__pycache__":
                _copy(entry, target / entry.name)
        return
    mode = FILE_MODE | (0o100 if os.stat(src).st_mode & 0o111 else 0)
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as out, open(src, "rb") as f:
            os.fchmod(fd, mode)  # the file may have existed, or the umask taken bits
            shutil.copyfileobj(f, out)
    except OSError as e:
        raise StorageError(f"cannot copy {src} to {target}: {e.strerror}") from None
