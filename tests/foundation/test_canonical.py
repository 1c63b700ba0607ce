"""Canonical JSON and idempotency keys (DESIGN.md §5.4)."""

from __future__ import annotations

import hashlib
import json
import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorch.wire.canonical import canonical_json, digest, idempotency_key

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=20,
)


def test_key_matches_an_independent_computation() -> None:
    inputs = {"round": 2, "answers": "sha256:" + "0" * 64, "é": [1, 2.5]}
    expected = [{"path": "src/x.py", "required": True}]
    material = "\n".join(
        [
            "review",
            "T-0042",
            "snap-0123456789ab",
            '{"answers":"sha256:' + "0" * 64 + '","round":2,"é":[1,2.5]}',
            '[{"path":"src/x.py","required":true}]',
        ]
    )
    want = "ik:" + hashlib.sha256(material.encode()).hexdigest()
    assert idempotency_key("review", "T-0042", "snap-0123456789ab", inputs, expected) == want


@given(json_values)
def test_whitespace_and_key_order_never_change_the_text(value: object) -> None:
    reparsed = json.loads(json.dumps(value, indent=3, sort_keys=False))
    assert canonical_json(reparsed) == canonical_json(value)


@given(st.dictionaries(st.text(), json_values, min_size=2, max_size=6))
def test_key_order_never_changes_the_key(d: dict[str, object]) -> None:
    reversed_d = dict(reversed(list(d.items())))
    assert idempotency_key("implement", "T-1", "snap-aaaaaaaaaaaa", d, []) == idempotency_key(
        "implement", "T-1", "snap-aaaaaaaaaaaa", reversed_d, []
    )


FIELDS = ("action", "task_id", "snapshot_id", "inputs", "expected")


@given(
    st.sampled_from(FIELDS),
    st.text(min_size=1, max_size=10),
    json_values,
)
def test_any_change_to_any_field_changes_the_key(field: str, text: str, value: object) -> None:
    base = {
        "action": "review",
        "task_id": "T-0042",
        "snapshot_id": "snap-0123456789ab",
        "inputs": {"round": 1},
        "expected": [],
    }
    changed = dict(base)
    if field in ("inputs", "expected"):
        changed[field] = {"changed": value} if field == "inputs" else [{"path": text}]
    else:
        changed[field] = str(base[field]) + text
    k1 = idempotency_key(*base.values())  # type: ignore[arg-type]
    k2 = idempotency_key(*changed.values())  # type: ignore[arg-type]
    assert k1 != k2


@given(json_values)
def test_key_format(value: object) -> None:
    key = idempotency_key("implement", "T-1", "snap-aaaaaaaaaaaa", {"v": value}, [])
    assert re.fullmatch(r"ik:[0-9a-f]{64}", key)


def test_canonical_forms() -> None:
    assert canonical_json({"b": 1, "a": [1.0, 0.1, "é", {"z": None, "y": True}]}) == (
        '{"a":[1.0,0.1,"é",{"y":true,"z":null}],"b":1}'
    )
    assert canonical_json(1e100) == "1e+100"
    assert canonical_json("\u2028") == '"\u2028"'


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_infinity_are_refused(bad: float) -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": bad})


def test_digest_format() -> None:
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", digest({"a": 1}))
    assert digest({"a": 1, "b": 2}) == digest({"b": 2, "a": 1})
