"""The layers on disk: the contract holds, no import cycle, a small top level (issue 23)."""

from __future__ import annotations

import importlib
import pathlib
import shutil
import subprocess
import sys

import grimp

import lorch

ROOT = pathlib.Path(__file__).resolve().parents[2]
LAYERS = ("wire", "core", "store", "agents", "engine", "app")


def test_the_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports", path=str(pathlib.Path(sys.executable).parent))
    assert lint is not None, "import-linter is a test dependency"
    done = subprocess.run(
        [lint, "--no-cache"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:]
    assert "0 broken" in done.stdout


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.find_modules_directly_imported_by(v)):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return found


def test_no_import_cycle_type_checking_imports_included() -> None:
    graph = grimp.build_graph("lorch", exclude_type_checking_imports=False)
    # A package's __init__ importing its own modules is not a cycle of the code's.
    cycles = [c for c in _cycles(graph) if not any(m == "lorch" for m in c)]
    assert cycles == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(m)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph) == [["p.a", "p.b"]]


def test_lorch_keeps_at_most_eight_top_level_modules() -> None:
    top = sorted(p.name for p in (ROOT / "lorch").glob("*.py"))
    assert len(top) <= 8, top


def test_each_layer_says_what_it_owns_and_may_import() -> None:
    for layer in LAYERS:
        doc = importlib.import_module(f"lorch.{layer}").__doc__ or ""
        assert doc.strip(), layer
        assert "import" in doc.lower(), f"lorch.{layer}'s docstring names what it may import"


def test_the_public_api_is_pinned() -> None:
    assert lorch.__all__ == [
        "ConfigError",
        "FramingError",
        "Ledger",
        "LedgerError",
        "LorchError",
        "PathEscape",
        "SchemaError",
        "StorageError",
        "UsageError",
        "__version__",
        "canonical_json",
        "digest",
        "idempotency_key",
        "sha256_bytes",
        "sha256_file",
    ]
    for name in lorch.__all__:
        assert getattr(lorch, name) is not None, name


def test_import_lorch_imports_nothing_else_of_lorch() -> None:
    code = "import sys, lorch; print(sorted(m for m in sys.modules if m.startswith('lorch')))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "['lorch']"
