"""Transports by capability (issue 23): above the agents layer nobody compares a
transport's name; only the registry, the transports and the config parser read it."""

from __future__ import annotations

import ast
import pathlib
from typing import Any

from lorch.agents import registry
from lorch.wire import schemas

ROOT = pathlib.Path(__file__).resolve().parents[2]
# The agents layer (the registry, the transports), the config parser, and the
# validators generated from the configuration's schema.
ALLOWED = ("lorch/agents/", "lorch/app/config.py", "lorch/wire/_validators/")
NAMES = frozenset(registry.names())


def _names_transport(node: ast.expr) -> bool:
    """Whether ``node`` is a transport's name: a literal one, a collection of
    them, a ``transport`` variable or attribute, or ``registry.X.name``."""
    if isinstance(node, ast.Constant):
        return node.value in NAMES
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return any(_names_transport(e) for e in node.elts)
    if isinstance(node, ast.Name):
        return node.id == "transport"
    if isinstance(node, ast.Attribute):
        if node.attr == "transport":
            return True
        root: ast.expr = node
        while isinstance(root, ast.Attribute):
            root = root.value
        return node.attr == "name" and isinstance(root, ast.Name) and root.id == "registry"
    if isinstance(node, ast.Call):
        # spec.get("transport"), spec["transport"] are read below as subscripts/calls
        return (
            isinstance(node.func, ast.Attribute)
            and node.func.attr == "get"
            and bool(node.args)
            and isinstance(node.args[0], ast.Constant)
            and node.args[0].value == "transport"
        )
    if isinstance(node, ast.Subscript):
        return isinstance(node.slice, ast.Constant) and node.slice.value == "transport"
    return False


def comparisons(source: str) -> list[int]:
    """The lines of ``source`` that compare a transport's name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        sides = (node.left, *node.comparators)
        if any(_names_transport(e) for e in sides) and not any(
            isinstance(e, ast.Constant) and e.value is None for e in sides
        ):
            found.append(node.lineno)
    return found


def test_the_scan_finds_every_way_of_comparing_a_name() -> None:
    caught = [
        'cfg.transport == "acp"',
        'spec.get("transport") == "acp"',
        'spec["transport"] != "ndjson"',
        'kind in ("ndjson", "acp")',
        "transport == other",
        "x == registry.ACP.name",
        '"acp" in enum',
    ]
    for line in caught:
        assert comparisons(line) == [1], line
    passed = [
        "transport is None",
        "cfg.kind.heartbeats",
        'x == "start"',
        "kind.name",
        "registry.capabilities(t)",
    ]
    for line in passed:
        assert comparisons(line) == [], line


def test_no_transport_name_is_compared_outside_the_agents_layer() -> None:
    found = []
    for path in sorted((ROOT / "lorch").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if rel.startswith(ALLOWED):
            continue
        found += [f"{rel}:{n}" for n in comparisons(path.read_text(encoding="utf-8"))]
    assert found == [], "ask the transport's capabilities (lorch/agents/registry.py) instead"


def _role_schema() -> dict[str, Any]:
    role: dict[str, Any] = schemas.load_schema("config")["$defs"]["role"]
    return role


def test_the_registry_names_the_transports_the_config_schema_accepts() -> None:
    assert set(registry.names()) == set(_role_schema()["properties"]["transport"]["enum"])
    assert all(registry.in_schema(registry.capabilities(n)) for n in registry.names())


def test_each_transport_carries_its_registry_entry() -> None:
    from lorch.agents.acp.port import AcpTransport
    from lorch.agents.ndjson import NdjsonTransport
    from lorch.app.launch import ConfiguredAcpTransport

    assert NdjsonTransport.capabilities is registry.NDJSON
    assert AcpTransport.capabilities is registry.ACP
    assert ConfiguredAcpTransport.capabilities is registry.ACP


def test_a_transports_own_options_are_the_fields_the_schema_allows_only_with_it() -> None:
    only = {
        field
        for field, rule in _role_schema()["else"]["properties"].items()
        if "allowed only with" in rule.get("description", "")
    }
    assert set(registry.ACP.options) == only
    assert registry.NDJSON.options == ()
