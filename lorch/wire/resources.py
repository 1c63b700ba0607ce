"""Where the bundled schemas and scenarios live.

In a wheel they are installed under ``lorch/_data``; in a source checkout (or an
editable install) they are the top-level ``schemas/`` and ``scenarios/`` folders.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

# The ``lorch`` package folder (this module is lorch/wire/resources.py).
_PKG = Path(__file__).resolve().parents[1]


def _find(name: str) -> Path:
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"lorch installation is missing its {name}/ folder (looked in {_PKG})")


@cache
def schemas_dir() -> Path:
    """The folder holding ``v1/*.v1.json``."""
    return _find("schemas")


@cache
def scenarios_dir() -> Path:
    """The folder holding one sub-folder per bundled scenario."""
    return _find("scenarios")


def schema_path(name: str) -> Path:
    return schemas_dir() / "v1" / f"{name}.v1.json"


def scenario_names() -> list[str]:
    return sorted(p.name for p in scenarios_dir().iterdir() if (p / "scenario.json").is_file())
