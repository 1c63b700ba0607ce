"""Benchmarks measure lorch as `pip install` leaves it: compiled to bytecode.

`pip install .` writes the .pyc files of every module at install time. An
editable checkout gets them only when Python may write them as it imports; with
PYTHONDONTWRITEBYTECODE set (as on some CI machines) every process would
compile lorch and mockagent from source again, and start-up figures would
measure the compiler. So each benchmark compiles both packages first.
"""

from __future__ import annotations

import compileall
from pathlib import Path

import lorch
import mockagent


def compile_packages() -> None:
    for pkg in (lorch, mockagent):
        compileall.compile_dir(str(Path(pkg.__file__).parent), quiet=1)
