"""The mutation bench's mutants must apply to the current source, or the score rots silently."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "harness_power.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("harness_power", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["harness_power"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_at_least_twenty_realistic_mutants(bench: ModuleType) -> None:
    real = [m for m in bench.MUTANTS if not m.equivalent]
    assert len(real) >= 20
    assert {m.area for m in real} >= {
        "ledger",
        "atomic",
        "receipts",
        "runner",
        "workflow",
        "resume",
    }
    assert len({m.name for m in bench.MUTANTS}) == len(bench.MUTANTS)


def test_every_mutant_applies_once_and_compiles(bench: ModuleType) -> None:
    files = bench.sources()
    for m in bench.MUTANTS:
        texts: dict[Path, str] = {}
        for path, old, new in bench.locate(m, files):  # raises unless each edit matches once
            texts[path] = texts.get(path, files[path]).replace(old, new, 1)
        for path, text in texts.items():
            assert text != files[path], m.name
            compile(text, str(path), "exec")


def test_apply_writes_a_mutated_copy(bench: ModuleType, tmp_path: Path) -> None:
    m = bench.MUTANTS[0]
    bench.apply(m, tmp_path)
    ((path, _, new),) = bench.locate(m, bench.sources())
    mutated = tmp_path / path.relative_to(bench.ROOT)
    assert new in mutated.read_text() and mutated.read_text() != path.read_text()
    assert (tmp_path / "scenarios" / "happy-path" / "scenario.json").is_file()


def test_check_patterns_says_whether_every_mutant_applies(
    bench: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    assert bench.check_patterns(bench.MUTANTS) == 0
    n = len(bench.MUTANTS)
    assert f"{n}/{n} mutants apply" in capsys.readouterr().out
    stale = bench.Mutant("stale", "ledger", (("no such line in lorch\n", ""),))
    assert bench.check_patterns([bench.MUTANTS[0], stale]) == 1
    assert "NO MATCH" in capsys.readouterr().out
