"""The generated fast validators: current with the schemas, and of one mind with jsonschema."""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from lorch.app.runner import Console, run
from lorch.app.scenarios import materialize
from lorch.store import ledger
from lorch.wire import schemas
from lorch.wire._validators import generate
from lorch.wire.resources import scenarios_dir, schema_path
from mockagent import schemacheck
from tests.conftest import examples

MOCKAGENT = ("command", "fixture")


@functools.cache
def reference(name: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads(schema_path(name).read_text()))


@pytest.mark.parametrize(("package", "name"), generate.GENERATED)
def test_generated_validator_is_current(package: str, name: str) -> None:
    path = generate.generated_path(name, package)
    assert path.read_text(encoding="utf-8") == generate.generate(name, package), (
        f"{path} is stale: run `python -m lorch.wire._validators`"
    )


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Any]]:
    """Real documents of every kind, from one run of the review-loop scenario."""
    ws = tmp_path_factory.mktemp("corpus") / "ws"
    materialize("review-loop", ws)
    with open(os.devnull, "w") as sink:
        outcome = run(ws, console=Console(out=sink, color=False))
    assert outcome.status == "completed"
    docs: dict[str, list[Any]] = {name: [] for name in (*schemas.NAMES, "fixture")}
    for path in ws.glob("events/*.ndjson"):
        # The chain field is the ledger's framing, not the record's: read strips it.
        for record in ledger.read(path, validate=False):
            docs[record["kind"]].append(record)
    docs["receipt"] = [json.loads(p.read_text()) for p in ws.glob("receipts/*/step-*.json")]
    docs["run-state"] = [json.loads((ws / "state/run.json").read_text())]
    docs["index"] = [json.loads((ws / "state/index.json").read_text())]
    docs["snapshot-manifest"] = [
        json.loads(p.read_text()) for p in ws.glob("snapshots/*.manifest.json")
    ]
    docs["config"] = [json.loads((ws / "lorch.json").read_text())]
    docs["fixture"] = [json.loads(p.read_text()) for p in scenarios_dir().glob("*/fixtures/*.json")]
    docs["heartbeat"] = [
        {
            "kind": "heartbeat",
            "agent": {"agent_type": "builder", "agent_id": "b-1"},
            "seq": 3,
            "status": "busy",
            "pid": 4242,
            "uptime_s": 1.5,
            "last_activity_at": "2026-01-01T00:00:00Z",
            "task_id": "T-0042",
        }
    ]
    docs["log"] = [
        {
            "kind": "log",
            "level": "info",
            "message": "hello",
            "timestamp": "2026-01-01T00:00:00Z",
        }
    ]
    docs["review-verdict"] = [
        {"status": "approved", "summary": "fine"},
        {"status": "changes_requested", "summary": "x", "comments": [{"text": "y", "line": 2}]},
    ]
    docs["spec-notes-verdict"] = [
        {"status": "no_changes_needed", "summary": "fine"},
        {"status": "changes_requested", "summary": "x", "notes": [{"path": "a", "text": "b"}]},
    ]
    return docs


def test_corpus_is_valid_to_both_engines(corpus: dict[str, list[Any]]) -> None:
    for name, docs in corpus.items():
        assert docs, f"no {name} documents in the corpus"
        for doc in docs:
            assert reference(name).is_valid(doc), (name, doc)
            if name in schemas.NAMES:
                assert schemas.fast(name)(doc), (name, doc)
            if name in MOCKAGENT:
                assert schemacheck.is_valid(name, doc), (name, doc)


ODD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(["", "..", "T-1", "snap-0123456789ab", "sha256:" + "a" * 64, "ik:" + "0" * 64]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


def _mutate(doc: Any, path: tuple[Any, ...], how: str, value: Any) -> Any:
    doc = copy.deepcopy(doc)
    if not path:
        return value
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    last = path[-1]
    if how == "delete" and isinstance(parent, dict):
        del parent[last]
    elif how == "extra" and isinstance(parent[last], dict):
        parent[last]["unexpected_field"] = value
    else:
        parent[last] = value
    return doc


@settings(max_examples=examples(400), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_engines_agree_on_broken_documents(corpus: dict[str, list[Any]], data: Any) -> None:
    name = data.draw(st.sampled_from([*schemas.NAMES, "fixture"]))
    doc = data.draw(st.sampled_from(corpus[name]))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        path = data.draw(st.sampled_from(_paths(doc)))
        how = data.draw(st.sampled_from(["replace", "delete", "extra"]))
        doc = _mutate(doc, path, how, data.draw(ODD_VALUES))
    expected = reference(name).is_valid(doc)
    if name in schemas.NAMES:
        assert schemas.fast(name)(doc) == expected, (name, doc)
    if name in MOCKAGENT:
        assert schemacheck.is_valid(name, doc) == expected, (name, doc)


def test_validate_names_the_path_when_the_fast_engine_rejects(
    corpus: dict[str, list[Any]], tmp_path: Path
) -> None:
    bad = {**corpus["event"][0], "task_id": "../escape"}
    with pytest.raises(schemas.SchemaError, match=r"\$\.task_id"):
        schemas.validate("event", bad, source="line 3")
