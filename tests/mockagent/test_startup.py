"""mockagent's start stays light: what it imports, and the shortcuts that keep it so.

Every run starts three agents and the crash harness and the CI suite start
them hundreds of times, so a plain start imports only what its first heartbeat
needs. The modules each kind of start imports are pinned here (a new import on
the start path is a failing test, not a slow drift); each shortcut taken to
avoid a heavy module is held to the answers of the module it stands in for.
"""

from __future__ import annotations

import difflib
import json
import subprocess
import sys
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorch.wire.resources import schema_path
from mockagent import cli
from mockagent.fixture import (
    TOP_LEVEL,
    FixtureError,
    _hint,
    load,
    safe_target,
    shown,
)

from .driver import command

# Runs mockagent's main in this interpreter and writes the modules it imported
# (beyond those the interpreter had already) to the file named first.
PROBE = """
import sys
out, argv = sys.argv[1], sys.argv[2:]
before = set(sys.modules)
from mockagent.cli import main
try:
    main(argv)
finally:
    with open(out, "w") as f:
        f.write("\\n".join(sorted(set(sys.modules) - before)))
"""
# The same, for a line of stdlib imports: what those cost in this Python version.
STDLIB = """
import sys
before = set(sys.modules)
exec(sys.argv[2])
with open(sys.argv[1], "w") as f:
    f.write("\\n".join(sorted(set(sys.modules) - before)))
"""

PLAIN = {
    "mockagent",
    "mockagent.cli",
    "mockagent.agent",
    "mockagent.wire",
    "mockagent.journal",
}
# A valid fixture: read and checked by the generated validator.
FIXTURE = PLAIN | {"mockagent.fixture", "mockagent.schemacheck", "mockagent._validators"}
WITH_FIXTURE = FIXTURE | {"mockagent._validators.fixture"}
# A command answered with the role's default answer: checked, worked, journaled.
ONE_COMMAND = FIXTURE | {"mockagent._validators.command", "mockagent.faults", "mockagent.files"}


def imported(tmp: Path, code: str, *args: str, stdin: bytes = b"") -> set[str]:
    out = tmp / f"modules-{len(list(tmp.glob('modules-*')))}.txt"
    subprocess.run(
        [sys.executable, "-c", code, str(out), *args],
        input=stdin,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return set(out.read_text().split())


def check_imports(tmp: Path, got: set[str], ours: set[str], stdlib: str) -> None:
    # __future__: the module of each mockagent module's `from __future__ import`.
    allowed = imported(tmp, STDLIB, stdlib) | {"__future__"}
    assert {m for m in got if m.split(".")[0] == "mockagent"} == ours
    extra = sorted(m for m in got if m.split(".")[0] != "mockagent" and m not in allowed)
    assert not extra, f"the start path now imports {extra} (beyond `{stdlib}`)"


def test_a_plain_start_imports_only_what_its_heartbeats_need(tmp_path: Path) -> None:
    got = imported(tmp_path, PROBE, "--type", "reviewer", "--workspace", str(tmp_path))
    check_imports(tmp_path, got, PLAIN, "import json, re, threading, signal")


def test_a_valid_fixture_costs_its_generated_validator_only(tmp_path: Path) -> None:
    """An original-format fixture: a note key, a delay, files, a fault; no jsonschema,
    pathlib, typing, difflib or argparse."""
    fx = tmp_path / "fx.json"
    body = {
        "comment": "a note, as the original fixtures have them",
        "responses": {
            "implement": {
                "delay_ms": 5,
                "files": [{"path": "src/a.py", "content": "A = 1\n"}],
                "fault": {"kind": "exit", "code": 3, "attempt": 7},
                "events": [{"type": "builder.completed", "status": "success"}],
            }
        },
    }
    fx.write_text(json.dumps(body))
    args = ("--type", "builder", "-script", str(fx), "--workspace", str(tmp_path))
    got = imported(tmp_path, PROBE, *args)
    # decimal: the generated validator's own import (python -m lorch.wire._validators).
    check_imports(tmp_path, got, WITH_FIXTURE, "import json, re, threading, signal, decimal")


def test_a_command_costs_its_validator_a_hash_and_a_lock(tmp_path: Path) -> None:
    line = json.dumps(command("review", role="reviewer")).encode() + b"\n"
    got = imported(tmp_path, PROBE, "--type", "reviewer", "--workspace", str(tmp_path), stdin=line)
    stdlib = "import json, re, threading, signal, decimal, hashlib, fcntl"
    check_imports(tmp_path, got, ONE_COMMAND, stdlib)


# -- the command line without argparse ---------------------------------------------

SPELLINGS = sorted(cli._BY_SPELLING)
VALUES = [
    "builder",
    "reviewer",
    "orchestration",
    "nobody",
    "f.json",
    "",
    "0",
    "3",
    "+4",
    "1_0",
    " 5 ",
    "-5",
    "-x",
    "-",
    "--",
    "x y",
    "1.5",
    "500ms",
    "1m30s",
    "0s",
    "10q",
    "nan",
    "inf",
    "-type",
]
OTHER = ["-h", "--help", "--work", "--scr", "--", "-", "", "extra", "--type=", "--no-files=1"]


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    argv: list[str] = []
    for _ in range(draw(st.integers(0, 6))):
        spelling = draw(st.sampled_from(SPELLINGS))
        value = draw(st.sampled_from(VALUES))
        form = draw(st.sampled_from(["pair", "equals", "alone", "other"]))
        if form == "pair":
            argv += [spelling, value]
        elif form == "equals":
            argv.append(f"{spelling}={value}")
        elif form == "alone":
            argv.append(spelling)
        else:
            argv.append(draw(st.sampled_from(OTHER + VALUES)))
    return argv


def fields(args: cli.Args) -> dict[str, object]:
    return {name: getattr(args, name) for name in cli.Args.__annotations__}


@settings(max_examples=400, deadline=None)
@given(argvs())
def test_quick_parse_answers_as_argparse_does(argv: list[str]) -> None:
    quick = cli.quick_parse(argv)
    if quick is None:
        return  # argparse's to read, explain or refuse
    full = cli._parser().parse_args(argv, namespace=cli.Args())
    got, want = fields(quick), fields(full)
    # float("nan") is a duration to both, and never equal to itself.
    if got["heartbeat_interval"] != got["heartbeat_interval"]:
        assert want["heartbeat_interval"] != want["heartbeat_interval"]
        got["heartbeat_interval"] = want["heartbeat_interval"] = "nan"
    assert got == want


def test_lorch_command_lines_take_the_quick_path() -> None:
    for argv in (
        ["--type", "builder"],
        ["-type", "builder", "-script", "fx.json", "-heartbeat-interval", "500ms"],
        ["--type=reviewer", "--review-changes-count", "2", "--heartbeat-interval", "30"],
        ["--type", "spec_maintainer", "--no-heartbeat", "--no-files", "--seed", "7"],
    ):
        assert cli.quick_parse(argv) is not None, argv
    for argv in (["--help"], ["--type", "nobody"], ["--work", "x"], ["--seed", "-5"]):
        assert cli.quick_parse(argv) is None, argv


def test_argparse_still_explains_a_bad_duration(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.parse(["--type", "builder", "--heartbeat-interval", "10q"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        "mockagent: error: argument --heartbeat-interval/-heartbeat-interval: "
        "'10q' is not a duration (seconds, or e.g. 500ms, 10s, 1m)"
    )


# -- paths without pathlib ---------------------------------------------------------

PATHS = st.text(alphabet="/.ab", max_size=12)


@given(PATHS)
def test_a_fixture_is_named_as_pathlib_names_it(path: str) -> None:
    assert shown(path) == str(PurePosixPath(path))


@given(PATHS)
def test_safe_target_joins_and_refuses_as_pathlib_did(rel: str) -> None:
    pure = PurePosixPath(rel)
    if pure.is_absolute() or ".." in pure.parts or not rel:
        with pytest.raises(FixtureError):
            safe_target("/ws", rel)
    else:
        assert safe_target("/ws", rel) == str(Path("/ws") / pure)


# -- messages of a rejected fixture ------------------------------------------------

ALL_OF_THEM = "'builder.progress', 'builder.completed', 'review.completed', 'spec.updated'"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"responses": ', "invalid JSON at line 1 column 15: Expecting value"),
        ("[1, 2]", "$: [1, 2] is not of type 'object'"),
        (
            {"responses": {"implement": {"delay": 5}}},
            "$.responses.implement: Additional properties are not allowed ('delay' was "
            "unexpected); did you mean 'delay_ms'?",
        ),
        (
            {"responses": {"dance": {}}},
            "$.responses: Additional properties are not allowed ('dance' was unexpected)",
        ),
        (
            {"responses": {"review": {"events": [{"type": "review.finished"}]}}},
            f"$.responses.review.events[0].type: 'review.finished' is not one of [{ALL_OF_THEM}"
            ", 'spec.no_changes_needed', 'spec.changes_requested…",
        ),
        (
            {"responses": {"implement": {"files": [{"path": "a", "content_file": "none.txt"}]}}},
            "$.responses.implement.files[0].content_file: no such file 'none.txt' next to the "
            "fixture",
        ),
        (
            {"misbehave": {"redo": True}},
            "$.misbehave: Additional properties are not allowed ('redo' was unexpected)",
        ),
        ({"respones": {}}, "$.respones: unknown key; did you mean 'responses'?"),
        (
            {
                "responses": {
                    "implement": {
                        "events": [
                            {
                                "type": "builder.completed",
                                "artifacts": [{"path": "a", "size": 1, "write": False}],
                            }
                        ]
                    }
                }
            },
            "$.responses.implement.events[0].artifacts[0].sha256: an artifact with "
            '"write": false is sent as claimed and needs a sha256:<64 hex>',
        ),
        (
            {"responses": {"implement": {"sequence": [{}], "after": "loop"}}},
            "$.responses.implement.after: 'loop' is not one of ['repeat_last', 'cycle']",
        ),
        (
            {"responses": {"implement": [{}, {"delay_ms": "x"}]}},
            "$.responses.implement[1].delay_ms: 'x' is not of type 'number'",
        ),
        (
            {"responses": {"implement": {"sequence": []}}},
            "$.responses.implement.sequence: [] should be non-empty",
        ),
        (
            {
                "match": [
                    {
                        "when": {"action": "implement"},
                        "response": {"files": [{"path": "a", "content_file": "nope"}]},
                    }
                ]
            },
            "$.match.files[0].content_file: missing file",
        ),
        (
            {"expect_snapshot": "snap-xyz"},
            "$.expect_snapshot: 'snap-xyz' does not match '^snap-[0-9a-f]{12}$'",
        ),
        (
            {"responses": {"implement": {"dribble": {"chunk": 0}}}},
            "$.responses.implement.dribble.chunk: 0 is less than the minimum of 1",
        ),
        (
            {"responses": {"implement": {"files": [{"path": "a", "contnet": "x"}]}}},
            "$.responses.implement.files[0]: 'content' is a required property",
        ),
    ],
)
def test_a_rejected_fixture_gets_one_line_naming_file_and_place(
    tmp_path: Path, body: str | dict[str, object], message: str
) -> None:
    fx = tmp_path / "fx.json"
    fx.write_text(body if isinstance(body, str) else json.dumps(body))
    # As lorch passes it (a Path) and as the command line does (a string).
    for path in (fx, shown(str(fx))):
        with pytest.raises(FixtureError) as e:
            load(path)
        assert str(e.value) == f"{fx}: {message}"
    r = subprocess.run(
        [sys.executable, "-m", "mockagent", "validate", f"{tmp_path}/./fx.json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (r.returncode, r.stderr) == (2, f"mockagent: {fx}: {message}\n")


def test_note_keys_are_accepted_and_no_fixture_is_missing(tmp_path: Path) -> None:
    fx = tmp_path / "fx.json"
    fx.write_text(json.dumps({"comment": "x", "_notes": [1], "responses": {}}))
    assert load(fx) == {"comment": "x", "_notes": [1], "responses": {}}
    with pytest.raises(FixtureError) as e:
        load(tmp_path / "none.json")
    assert str(e.value) == f"{tmp_path}/none.json: no such fixture file"


def test_an_unreadable_fixture_gets_one_line_too(tmp_path: Path) -> None:
    (tmp_path / "dir.json").mkdir()
    (tmp_path / "latin1.json").write_bytes(b'{"comment": "caf\xe9"}')
    (tmp_path / "crlf.json").write_bytes(b'{"responses":\r\n\r\n{,}}')
    for name, message in (
        ("dir.json", "cannot read the fixture: Is a directory"),
        ("latin1.json", "not UTF-8 text (byte 16: invalid continuation byte)"),
        (
            "crlf.json",
            "invalid JSON at line 3 column 2: Expecting property name enclosed in double quotes",
        ),
    ):
        with pytest.raises(FixtureError) as e:
            load(tmp_path / name)
        assert str(e.value) == f"{tmp_path}/{name}: {message}"
    r = subprocess.run(
        [sys.executable, "-m", "mockagent", "validate", str(tmp_path / "dir.json")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert (r.returncode, r.stderr) == (
        2,
        f"mockagent: {tmp_path}/dir.json: cannot read the fixture: Is a directory\n",
    )


def test_the_known_top_level_keys_are_the_schemas() -> None:
    schema = json.loads(schema_path("fixture").read_text())
    assert tuple(schema["properties"]) == TOP_LEVEL


@settings(max_examples=300)
@given(st.text(alphabet="abcehmnoprstx_", max_size=16))
def test_the_typo_hint_is_difflibs(key: str) -> None:
    known = list(TOP_LEVEL)
    close = difflib.get_close_matches(key, known, n=1, cutoff=0.75)
    assert _hint(key, known) == (f"; did you mean {close[0]!r}?" if close else "")
