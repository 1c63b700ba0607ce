"""Bundled scenarios: workspace templates with an expected outcome (docs/decisions.md D5)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from lorch.errors import UsageError
from lorch.resources import scenario_names, scenarios_dir

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
    """Copy the scenario's template into ``workspace``; return its scenario.json."""
    src = resolve(name_or_path)
    meta = load(src)
    workspace.mkdir(parents=True, exist_ok=True)
    for entry in sorted(src.iterdir()):
        if entry.name == META or entry.name == "__pycache__":
            continue
        target = workspace / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target)
    return meta
