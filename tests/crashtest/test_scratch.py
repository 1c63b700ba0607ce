"""Where crash workspaces go (docs/crash-testing.md, "Where crash workspaces go")."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lorch.crashtest import harness


def test_the_variable_names_the_scratch_folder(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(harness.SCRATCH_VAR, str(tmp_path))
    assert harness.default_scratch() == tmp_path
    assert harness.Options().scratch == tmp_path


def test_without_it_ram_when_there_is_some(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(harness.SCRATCH_VAR, raising=False)
    shm = Path("/dev/shm")
    ram = shm.is_dir() and os.access(shm, os.W_OK | os.X_OK)
    assert harness.default_scratch() == (shm if ram else None)
