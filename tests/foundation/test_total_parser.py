"""The parser is total: every byte sequence an agent prints becomes a valid
message or a protocol-error record, and nothing on the way to lorch's next
command raises (issue 14, point 1).

The property test below feeds generated and mutated lines through the path an
agent's line takes in a run: :func:`protocol.read_message` (parse, redact,
validate) → :meth:`State.fold` (as an event, or as the protocol-error record
lorch writes instead) → :func:`next_step` → :func:`protocol.encode` of the next
command. Malformed ``system.*`` records are folded too: the reducer must hold
whatever a damaged ledger says.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorch.core.state import State
from lorch.core.steps import Check, Finish, Send
from lorch.core.workflow import next_step
from lorch.wire import protocol, schemas
from lorch.wire.redact import Redactor

SECRET = "hunter2-supersecret-value"
REDACTOR = Redactor([SECRET])
TASK = {"id": "T-0042", "goal": "say hello", "expected_outputs": ["src/hello.py"]}
SNAP = "snap-0123456789ab"
ROLES = ("builder", "reviewer", "spec_maintainer", "orchestration", "system")
EVENTS = (
    "builder.progress",
    "builder.completed",
    "review.completed",
    "spec.updated",
    "spec.no_changes_needed",
    "spec.changes_requested",
    "artifact.produced",
    "error",
    "log",
    "system.run_started",
    "system.snapshot",
    "system.agent_started",
    "system.agent_restarted",
    "system.protocol_error",
    "system.command_failed",
    "system.resumed",
    "system.run_completed",
    "system.run_failed",
    "system.run_aborted",
)
SYSTEM_EVENTS = [
    name
    for name in schemas.load_schema("event")["properties"]["event"]["enum"]
    if name.startswith("system.")
]


# Byte strings an attacker splices into a line.
TOKENS = (
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"1e999999",
    b"-1e999999",
    b"1" * 5000,
    b"9223372036854775808",
    b"-9223372036854775809",
    b"9223372036854775807",
    b'"\\ud800"',
    b'"\\udfff\\ud800"',
    b'"\\ud83d\\ude00"',
    b"\xed\xa0\x80",
    b"\xff\xfe",
    b"\xc3",
    b"\x00",
    b'"\\u0000"',
    b"[" * 65 + b"]" * 65,
    b"{" * 30,
    b'{"a":' * 70 + b"1" + b"}" * 70,
    b"[" * 2000,
    b"null",
    b"{}",
    b"[]",
    b'"system"',
    b'"system.run_completed"',
    b'{"agent_type":"system"}',
    b'"\\u0073' + SECRET[1:].encode() + b'"',
    SECRET.encode(),
    b"\n",
    b'"',
    b"\\",
    b",",
    b":",
)
CORR = "corr-T-0042-1"
FRESH_N = [0]


def fresh(action: str) -> tuple[str, str]:
    FRESH_N[0] += 1
    return f"cmd-{FRESH_N[0]:012x}", "2026-12-01T00:10:00.000000Z"


def system(name: str, payload: Any) -> dict[str, Any]:
    return {
        "kind": "event",
        "message_id": "evt-000000000001",
        "correlation_id": "run-20261201-000000-abcdef01",
        "task_id": "T-0042",
        "from": {"agent_type": "system"},
        "event": name,
        "payload": payload,
        "occurred_at": "2026-12-01T00:00:00.000000Z",
    }


def started_state() -> State:
    """A run as lorch starts it: run_started, snapshot, the first command sent."""
    s = State()
    s.fold(
        system(
            "system.run_started",
            {"run_id": "run-20261201-000000-abcdef01", "task": TASK, "policy": {}},
        )
    )
    s.fold(system("system.snapshot", {"snapshot_id": SNAP, "files": 1}))
    step = next_step(s, fresh=fresh)
    assert isinstance(step, Send)
    s.fold(step.command)
    return s


def often(common: Any, *rare: Any) -> st.SearchStrategy[Any]:
    """Mostly ``common`` (so most lines are valid and drive the workflow), sometimes not."""
    other = st.one_of(*rare) if rare else st.just(common)
    return st.integers(0, 9).flatmap(lambda i: other if i == 0 else st.just(common))


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from([SECRET, "pass", "fail", "approved", SNAP, "builder", "system"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
payload_keys = st.sampled_from(
    [
        "tests",
        "status",
        "summary",
        "run_id",
        "task",
        "policy",
        "snapshot_id",
        "role",
        "pid",
        "pgid",
        "start_time",
        "idempotency_key",
        "reason",
        "code",
        "message",
        "review_path",
        "notes_path",
        "torn_tail",
        "delay_s",
    ]
)
payloads = st.one_of(
    st.dictionaries(payload_keys, json_values, max_size=5),
    st.fixed_dictionaries({"tests": st.just({"status": "pass", "summary": "ok"})}),
    st.fixed_dictionaries(
        {
            "tests": st.fixed_dictionaries(
                {"status": st.sampled_from(["pass", "fail", "maybe"]), "summary": json_values}
            )
        }
    ),
    json_values,
)
artifacts = st.lists(
    st.fixed_dictionaries(
        {
            "path": often("src/hello.py", st.sampled_from(["../etc/passwd", "/abs", "a/../b", ""])),
            "sha256": often("sha256:" + "0" * 64, st.just("bad")),
            "size": often(12, st.integers(-1, 10**20)),
        }
    ),
    max_size=2,
)
events = st.fixed_dictionaries(
    {
        "kind": often("event", st.sampled_from(["command", "heartbeat", "log"]), json_values),
        "message_id": often("evt-1", st.sampled_from(["", "x" * 300]), json_values),
        # The placeholder becomes the correlation id of the command in flight.
        "correlation_id": often("@CORR@", st.sampled_from(["corr-T-0042-9", "run-x"])),
        "task_id": often("T-0042", st.sampled_from(["T-9", "../x"]), json_values),
        "from": often(
            {"agent_type": "builder"},
            st.fixed_dictionaries({"agent_type": st.sampled_from(ROLES)}),
            st.dictionaries(st.text(max_size=10), json_values, max_size=2),
        ),
        "event": st.sampled_from(EVENTS),
        "occurred_at": often("2026-12-01T00:00:00Z", st.just("yesterday")),
    },
    optional={
        "status": st.sampled_from(["approved", "approved", "changes_requested", "success"]).flatmap(
            lambda v: often(v, json_values)
        ),
        "payload": st.integers(0, 9).flatmap(lambda i: json_values if i == 0 else payloads),
        "artifacts": st.integers(0, 9).flatmap(lambda i: json_values if i == 0 else artifacts),
    },
)
mutations = st.lists(
    st.tuples(
        st.sampled_from(["insert", "replace", "delete", "truncate", "value"]),
        st.integers(0, 2**16),
        st.sampled_from(TOKENS),
    ),
    max_size=4,
)
LINES_PER_EXAMPLE = 50
# x 50 lines: over 10,000 lines per run, the count the test is about, so no
# Hypothesis profile scales it (tests/conftest.py).
EXAMPLES = 210
counted = {"lines": 0, "protocol_errors": 0, "messages": 0, "commands": 0}


def mutate(line: bytes, op: str, at: int, token: bytes) -> bytes:
    if not line:
        return token
    i = at % (len(line) + 1)
    if op == "insert":
        return line[:i] + token + line[i:]
    if op == "replace":
        return line[:i] + token + line[i + len(token) :]
    if op == "delete":
        return line[:i] + line[i + 1 + at % 7 :]
    if op == "truncate":
        return line[:i]
    # "value": the value after some key becomes the token
    colons = [m.start() for m in re.finditer(b":", line)]
    if not colons:
        return line + token
    j = colons[at % len(colons)] + 1
    end = j
    while end < len(line) and line[end] not in b",}":
        end += 1
    return line[:j] + token + line[end:]


def lines_of(event: dict[str, Any], ops: list[tuple[str, int, bytes]], seed: int) -> list[bytes]:
    base = json.dumps(event, ensure_ascii=bool(seed & 1)).encode("utf-8", "surrogatepass")
    out = [base]
    for op in ops:
        out.append(mutate(base, *op))
    combined = base
    for op in ops:
        combined = mutate(combined, *op)
    out.append(combined)
    rng = random.Random(seed)
    while len(out) < LINES_PER_EXAMPLE:
        line = rng.choice(out)
        if rng.random() < 0.4:
            out.append(base)  # valid lines move the run on, to where the next attack lands
            continue
        for _ in range(rng.randint(1, 3)):
            line = mutate(
                line,
                rng.choice(["insert", "replace", "delete", "truncate", "value"]),
                rng.randrange(2**16),
                rng.choice(TOKENS),
            )
        if rng.random() < 0.1:
            line = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        out.append(line)
    # A line never holds its newline: the splitter cut there.
    return [line.split(b"\n")[0] for line in out[:LINES_PER_EXAMPLE]]


def feed(state: State, line: bytes, role: str) -> None:
    """What the runner does with one line from ``role``'s pipe, minus the I/O."""
    counted["lines"] += 1
    corr = state.pending.command["correlation_id"] if state.pending else CORR
    line = line.replace(b"@CORR@", corr.encode())
    result = protocol.read_message(line, REDACTOR)
    if isinstance(result, protocol.ProtocolError):
        counted["protocol_errors"] += 1
        payload = result.payload(role, REDACTOR)
        assert len(payload["prefix"]) <= protocol.PREFIX_LEN * 4
        assert SECRET not in payload["prefix"] and SECRET not in payload["reason"]
        if SECRET.encode() in line:
            # Cut through the secret, the prefix still shows none of it.
            shown = payload["prefix"]
            assert not any(shown.endswith(SECRET[:k]) for k in range(3, len(SECRET)))
        record = system("system.protocol_error", payload)
        protocol.validate_message(record)
        state.fold(json.loads(protocol.encode(record)))
    else:
        counted["messages"] += 1
        assert SECRET not in json.dumps(result, ensure_ascii=False)
        # Round trip: what lorch would record is one valid line again.
        again = protocol.read_message(protocol.encode(result)[:-1])
        assert again == result
        if result["kind"] in ("event", "command"):
            state.fold(result)
    advance(state)


def advance(state: State) -> None:
    """next_step until lorch would send something (checks accepted as they come)."""
    for _ in range(5):
        step = next_step(state, fresh=fresh)
        if isinstance(step, Finish):
            return
        if isinstance(step, Check):
            state.accept()
            continue
        line = protocol.encode(step.command)
        protocol.validate_message(json.loads(line))
        counted["commands"] += 1
        state.fold(step.command)
        return


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(events, mutations, st.integers(0, 2**32), st.sampled_from(ROLES[:4]))
def fuzz_one(
    event: dict[str, Any], ops: list[tuple[str, int, bytes]], seed: int, role: str
) -> None:
    state = started_state()
    for line in lines_of(event, ops, seed):
        feed(state, line, role)


def test_ten_thousand_hostile_lines_raise_nothing() -> None:
    for k in counted:
        counted[k] = 0
    fuzz_one()
    # Figures for the record (pytest -s shows them).
    print(f"\nfuzzed lines: {counted}")
    assert counted["lines"] >= 10_000
    assert counted["protocol_errors"] > 1000 and counted["messages"] > 300


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"[" * 100_000 + b"]" * 100_000, "more than 64 deep"),
        (b'{"a":' * 65 + b"1" + b"}" * 65, "more than 64 deep"),
        (b'{"a":1e999999}', "overflows to infinity"),
        (b'{"a":NaN}', "NaN is not JSON"),
        (b'{"a":Infinity}', "Infinity is not JSON"),
        (b'{"a":' + b"7" * 5000 + b"}", "5000 digits"),
        (b'{"a":9223372036854775808}', "outside 64 bits"),
        (b'{"a":"\\ud800"}', "lone UTF-16 surrogate"),
        (b'{"a":"x\\udc00y"}', "lone UTF-16 surrogate"),
        (b'{"a":"\xed\xa0\x80"}', "not valid UTF-8"),
        (b'{"a":1', "not valid JSON"),
        (b"[1]", "expected an object"),
        (b'{"kind":"event"}', "$: "),
    ],
)
def test_each_known_crash_is_a_protocol_error(line: bytes, reason: str) -> None:
    result = protocol.read_message(line)
    assert isinstance(result, protocol.ProtocolError)
    assert reason in result.reason
    assert result.size == len(line)
    payload = result.payload("builder")
    assert len(payload["prefix"]) <= protocol.PREFIX_LEN
    protocol.validate_message(system("system.protocol_error", payload))


def test_limits_are_exact() -> None:
    ok = {"kind": "log", "level": "info", "message": "m", "timestamp": "2026-12-01T00:00:00Z"}
    deep: Any = 1
    for _ in range(protocol.MAX_DEPTH - 2):  # the message and its "fields" are two levels
        deep = [deep]
    for value in (deep, 2**63 - 1, -(2**63), 1.5e308, "\U0001f600"):
        line = protocol.encode({**ok, "fields": {"v": value}})[:-1]
        assert protocol.read_message(line) == {**ok, "fields": {"v": value}}
    too_deep = protocol.encode({**ok, "fields": {"v": [deep]}})[:-1]
    assert isinstance(protocol.read_message(too_deep), protocol.ProtocolError)
    # A valid surrogate pair is one character, not a lone surrogate.
    assert protocol.parse_line(b'{"a":"\\ud83d\\ude00"}') == {"a": "\U0001f600"}
    # Brackets inside strings do not count as nesting.
    assert protocol.parse_line(b'{"a":"' + b"[" * 1000 + b'"}') == {"a": "[" * 1000}


@pytest.mark.parametrize(
    "payload",
    [
        {"role": 7, "pid": "1", "pgid": None},
        {"role": "builder", "pid": True, "pgid": 2},
        {"snapshot_id": 12},
        {"task": "T-1", "policy": [1], "run_id": {}},
        {"task": {"id": 3, "expected_outputs": 5}},
        {"idempotency_key": ["x"], "reason": {"a": 1}, "code": 9},
        {"torn_tail": 3, "orphans_killed": "all", "delay_s": "soon"},
        "not an object",
        None,
        [1, 2],
    ],
)
@pytest.mark.parametrize("name", SYSTEM_EVENTS)
def test_malformed_system_records_do_not_break_the_fold(name: str, payload: Any) -> None:
    from lorch.engine import transcript

    state = started_state()
    record = system(name, payload)
    state.fold(record)
    transcript.render(record, color=False)
    step = next_step(state, fresh=fresh)
    if isinstance(step, Send):
        protocol.encode(step.command)


def test_policy_of_the_wrong_type_falls_back_to_defaults() -> None:
    s = State()
    s.fold(
        system(
            "system.run_started",
            {"run_id": "r", "task": TASK, "policy": {"max_attempts": "many", "max_rounds": 1e9}},
        )
    )
    assert s.policy.max_attempts == 3
    assert s.policy.max_rounds == 10
