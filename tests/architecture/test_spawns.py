"""One process module (issue 23): every process lorch's layers start as their own
group starts in lorch/agents/procs.py, so each is known to ``end_strays``."""

from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]
# Tools may import anything and start what they like (they are no part of a run).
TOOLS = ("lorch/crashtest/", "lorch/conformance/", "lorch/testing/")
PROCS = "lorch/agents/procs.py"
# A process that outlives the call: only procs starts one. (subprocess.run waits
# for its helper, which stays in lorch's own group.)
STARTERS = frozenset(
    {"Popen", "create_subprocess_exec", "create_subprocess_shell", "fork", "forkpty"}
    | {f"spawn{s}" for s in ("l", "le", "lp", "lpe", "v", "ve", "vp", "vpe")}
    | {"posix_spawn", "posix_spawnp"}
)


def starts(source: str) -> list[str]:
    """The process starters ``source`` calls, as ``line:name``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            f = node.func
            name = (
                f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
            )
            if name in STARTERS:
                found.append(f"{node.lineno}:{name}")
    return found


def test_the_scan_finds_each_way_of_starting_a_process() -> None:
    for call in (
        "subprocess.Popen(a)",
        "await asyncio.create_subprocess_exec(*a)",
        "os.fork()",
        "os.posix_spawn(p, a, e)",
        "Popen(a)",
    ):
        assert starts(call), call
    assert starts("subprocess.run(a)") == []
    assert starts("procs.spawn(a, env=e)") == []


def test_every_process_starts_in_procs() -> None:
    found = []
    for path in sorted((ROOT / "lorch").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel == PROCS or rel.startswith(TOOLS):
            continue
        found += [f"{rel}:{s}" for s in starts(path.read_text(encoding="utf-8"))]
    assert found == [], "start it with lorch.agents.procs.spawn or spawn_async"
    assert starts((ROOT / PROCS).read_text(encoding="utf-8")), "procs starts them"
