"""``lorch config``: show, get, set, unset and check, through the CLI's own entry point."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorch.app import configcheck
from lorch.app.cli import main
from lorch.app.configcli import _MISSING, get_in, indent_of, key_text, parse_key, set_in, unset_in

MOCK: dict[str, Any] = {
    "version": "1",
    "task": {"id": "T-1", "goal": "Add a greeting"},
    "agents": {
        r: {"cmd": ["mockagent", "--type", r]} for r in ("builder", "reviewer", "spec_maintainer")
    },
}
CLAUDE_ENV = ["ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL"]


def acp_agents(cmd: list[str], pass_env: list[str]) -> dict[str, Any]:
    return {
        r: {"transport": "acp", "cmd": cmd, "pass_env": pass_env}
        for r in ("builder", "reviewer", "spec_maintainer")
    }


def write(ws: Path, doc: Any, indent: int | str | None = 2) -> Path:
    ws.mkdir(parents=True, exist_ok=True)
    path = ws / "lorch.json"
    path.write_text(json.dumps(doc, indent=indent) + "\n")
    return path


def lorch(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path / "ws"


# -- keys -------------------------------------------------------------------------

names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,8}", fullmatch=True)


@given(
    st.lists(st.one_of(names, st.integers(0, 99)), min_size=1, max_size=6).filter(
        lambda ps: isinstance(ps[0], str)
    )
)
def test_keys_round_trip(parts: list[str | int]) -> None:
    assert parse_key(key_text(parts)) == parts
    assert parse_key("$." + key_text(parts)) == parts


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(names, inner, max_size=3),
    max_leaves=8,
)


@given(st.dictionaries(names, json_values, min_size=1, max_size=4), json_values, st.data())
def test_set_get_unset_agree(doc: dict[str, Any], value: Any, data: st.DataObject) -> None:
    # A path to an existing value, then set, read, remove.
    first = data.draw(st.sampled_from(sorted(doc)))
    parts: list[str | int] = [first]
    node: Any = doc[first]
    while isinstance(node, dict | list) and node and data.draw(st.booleans()):
        if isinstance(node, dict):
            key = data.draw(st.sampled_from(sorted(node)))
            parts.append(key)
            node = node[key]
        else:
            i = data.draw(st.integers(0, len(node) - 1))
            parts.append(i)
            node = node[i]
    edited = json.loads(json.dumps(doc))
    set_in(edited, parts, value)
    assert get_in(edited, parts) == value
    assert unset_in(edited, parts)
    assert get_in(edited, parts) is _MISSING or isinstance(parts[-1], int)
    assert not unset_in(edited, [*parts[:-1], "no such key"])


@pytest.mark.parametrize("bad", ["", "[0]", "a..b", "a.[0]", "a b", "a[x]", ".a"])
def test_malformed_keys_are_refused(ws: Path, capsys: pytest.CaptureFixture[str], bad: str) -> None:
    write(ws, MOCK)
    rc, _, err = lorch(capsys, "config", "get", "-w", str(ws), bad)
    assert rc == 2
    assert "is not a key" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    ("text", "indent"),
    [('{\n    "a": 1\n}\n', "    "), ('{\n\t"a": 1\n}', "\t"), ('{"a": 1}', None)],
)
def test_indent_is_detected(text: str, indent: str | None) -> None:
    assert indent_of(text) == indent


# -- show -------------------------------------------------------------------------


def test_show_gives_each_value_its_origin(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(json.dumps(MOCK))
    doc["policy"] = {"retry": {"max_attempts": 4, "backoff": {"initial_ms": 250}}}
    doc["agents"]["orchestration"] = {"enabled": False, "cmd": ["mockagent"]}
    write(ws, doc)
    rc, out, _ = lorch(capsys, "config", "show", "-w", str(ws), "--json")
    assert rc == 0
    rows = {r["key"]: r for r in json.loads(out)["settings"]}
    assert rows["agents.builder.cmd"]["origin"] == "file"
    assert rows["agents.builder.transport"] == {
        "key": "agents.builder.transport",
        "value": "ndjson",
        "origin": "default",
        "from": None,
    }
    assert rows["policy.max_attempts"]["value"] == 4
    assert rows["policy.max_attempts"]["from"] == "$.policy.retry.max_attempts"
    assert rows["policy.backoff.initial_s"]["value"] == 0.25
    assert rows["policy.backoff.max_s"] == {
        "key": "policy.backoff.max_s",
        "value": 60.0,
        "origin": "default",
        "from": None,
    }
    assert rows["agents.builder.timeouts_s.start"]["value"] == 30.0  # max(3 × 10 s, 10 s)
    assert rows["agents.orchestration.enabled"]["value"] is False
    assert "agents.orchestration.transport" not in rows  # a disabled role has nothing else


def test_show_inherits_role_values_from_the_policy(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(json.dumps(MOCK))
    doc["policy"] = {"heartbeat_interval_s": 2, "timeouts_s": {"review": 30}}
    doc["agents"]["reviewer"]["timeouts_s"] = {"review": 20}
    write(ws, doc)
    rc, out, _ = lorch(capsys, "config", "show", "-w", str(ws))
    assert rc == 0
    lines = out.splitlines()
    assert (
        "file     agents.builder.heartbeat_interval_s = 2.0  (from $.policy.heartbeat_interval_s)"
        in lines
    )
    assert (
        "file     agents.builder.timeouts_s.review = 30.0  (from $.policy.timeouts_s.review)"
        in lines
    )
    assert "file     agents.reviewer.timeouts_s.review = 20.0" in lines
    assert "default  agents.builder.timeouts_s.implement = 600.0" in lines


def test_show_masks_secrets(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-from-the-environment")
    doc = json.loads(json.dumps(MOCK))
    doc["agents"]["builder"]["env"] = {
        "OPENAI_API_KEY": "not-a-shaped-key",
        "MODEL": "fast",
        "OPAQUE": "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7",
    }
    doc["agents"]["builder"]["cmd"] = [
        "my-agent",
        "--key",
        "sk-ant-api03-abcdefghijklmnopqrstuvwxyz",
        "--token",
        "tok-from-the-environment",
    ]
    write(ws, doc)
    for args in ([], ["--json"]):
        rc, out, _ = lorch(capsys, "config", "show", "-w", str(ws), *args)
        assert rc == 0
        for secret in (
            "not-a-shaped-key",
            "a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7",
            "sk-ant-api03",
            "tok-from-the-environment",
        ):
            assert secret not in out
        assert "fast" in out and "my-agent" in out


def test_show_refuses_an_invalid_file_in_one_line_per_problem(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(json.dumps(MOCK))
    doc["agents"]["builder"]["cmd"] = []
    write(ws, doc)
    rc, out, err = lorch(capsys, "config", "show", "-w", str(ws))
    assert (rc, out) == (2, "")
    assert "$.agents.builder.cmd" in err and "Traceback" not in err


# -- get --------------------------------------------------------------------------


def test_get_reads_the_file_then_the_defaults(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(ws, MOCK)
    get = ("config", "get", "-w", str(ws))
    assert lorch(capsys, *get, "agents.builder.cmd") == (
        0,
        '["mockagent", "--type", "builder"]\n',
        "",
    )
    assert lorch(capsys, *get, "agents.builder.cmd[0]") == (0, "mockagent\n", "")
    assert lorch(capsys, *get, "$.agents.builder.cmd[0]", "--json") == (0, '"mockagent"\n', "")
    assert lorch(capsys, *get, "policy.backoff.max_s") == (0, "60.0\n", "")
    rc, out, _ = lorch(capsys, *get, "policy.backoff")  # a section the file leaves out
    assert rc == 0
    assert json.loads(out) == {"initial_s": 1.0, "factor": 2.0, "max_s": 60.0}
    rc, out, err = lorch(capsys, *get, "task.spec_path")
    assert (rc, out) == (1, "")
    assert "task.spec_path is not set and has no default" in err


def test_get_names_an_unknown_field(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(ws, MOCK)
    rc, _, err = lorch(capsys, "config", "get", "-w", str(ws), "policy.backof.max_s")
    assert rc == 2
    assert "no field 'backof' here; did you mean 'backoff'?" in err


def test_get_masks_unless_revealed(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(json.dumps(MOCK))
    doc["agents"]["builder"]["env"] = {"GEMINI_API_KEY": "abcd-1234"}
    write(ws, doc)
    key = "agents.builder.env.GEMINI_API_KEY"
    assert lorch(capsys, "config", "get", "-w", str(ws), key) == (0, "***\n", "")
    assert lorch(capsys, "config", "get", "-w", str(ws), key, "--reveal") == (0, "abcd-1234\n", "")


# -- set and unset ----------------------------------------------------------------


def backups(ws: Path) -> list[Path]:
    folder = ws / "state" / "backups"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def test_set_writes_keeps_order_indent_and_a_backup(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(ws, MOCK, indent=4)
    before = path.read_bytes()
    rc, out, _ = lorch(capsys, "config", "set", "-w", str(ws), "policy.backoff.max_s", "5")
    assert rc == 0 and "policy.backoff.max_s changed" in out
    after = json.loads(path.read_text())
    assert after["policy"] == {"backoff": {"max_s": 5}}
    assert list(after) == ["version", "task", "agents", "policy"]
    assert path.read_text() == json.dumps(after, indent=4) + "\n"
    [kept] = backups(ws)
    assert kept.read_bytes() == before
    assert kept.name.startswith("lorch.json.") and kept.name.endswith("Z")
    # A second change in the same second gets a name of its own.
    assert lorch(capsys, "config", "set", "-w", str(ws), "policy.max_rounds", "3")[0] == 0
    assert len(backups(ws)) == 2


@pytest.mark.parametrize(
    ("args", "value"),
    [
        (["agents.builder.cmd[2]", "reviewer"], ["mockagent", "--type", "reviewer"]),
        (["agents.builder.cmd[3]", "--no-files"], ["mockagent", "--type", "builder", "--no-files"]),
        (["agents.builder.cmd", '["my-agent", "-v"]'], ["my-agent", "-v"]),
        (["task.id", "0042"], "0042"),  # not JSON: a string
        (["--string", "task.id", "42"], "42"),
        (["policy.allowed_failures", "true"], True),
        (["agents.builder.env.MODEL", "fast"], {"MODEL": "fast"}),
    ],
)
def test_set_parses_json_else_a_string(
    ws: Path, capsys: pytest.CaptureFixture[str], args: list[str], value: Any
) -> None:
    path = write(ws, MOCK)
    rc, _, err = lorch(capsys, "config", "set", "-w", str(ws), *args)
    assert rc == 0, err
    key = next(a for a in args if a != "--string")
    parts = parse_key(key)
    doc = json.loads(path.read_text())
    target = parts[:-1] if key.endswith("MODEL") or key[-1] == "]" else parts
    for p in target:
        doc = doc[p]
    assert doc == value


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [
        ("policy.backoff.max_s", "-1", "$.policy.backoff.max_s: -1 is less than the minimum of 0"),
        ("agents.builder.transport", "grpc", "$.agents.builder.transport: 'grpc' is not one of"),
        ("task.id", "42", "$.task.id: 42 is not of type 'string'"),
        ("policy.max_atempts", "3", "did you mean 'max_attempts'?"),
        ("policy.concurrency", "2", "$.policy.concurrency: 2 is not supported"),
        ("agents.builder.permissions", "{}", 'allowed only with "transport": "acp"'),
        ("version", '"2"', "$.version: version 2 is newer than this lorch"),
    ],
)
def test_set_refuses_what_would_not_load(
    ws: Path, capsys: pytest.CaptureFixture[str], key: str, value: str, says: str
) -> None:
    path = write(ws, MOCK)
    before = path.read_bytes()
    rc, out, err = lorch(capsys, "config", "set", "-w", str(ws), key, value)
    assert rc == 2
    assert says in err and "(fix: " in err and err.endswith("; nothing written\n")
    assert err.count("\n") == 1 and out == ""
    assert path.read_bytes() == before and backups(ws) == []


def test_refusals_and_problems_mask_what_looks_like_a_key(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = "sk-ant-api03-abcdefghijklmnopqrstuvwxyz"
    path = write(ws, MOCK)
    rc, _, err = lorch(capsys, "config", "set", "-w", str(ws), "agents.builder.cmd", key)
    assert rc == 2 and "$.agents.builder.cmd: '***' is not of type 'array'" in err
    doc = json.loads(path.read_text())
    write(ws, {**doc, "agents": {**MOCK["agents"], "builder": {"cmd": key}}})
    rc, out, _ = lorch(capsys, "config", "check", "-w", str(ws))
    assert rc == 2 and "$.agents.builder.cmd:" in out and key not in out
    write(ws, {**doc, "agents": [key]})
    rc, out, _ = lorch(capsys, "config", "check", "-w", str(ws))
    assert rc == 2 and "$.agents:" in out and key not in out


def test_set_checks_lorch_own_rules_not_only_the_schema(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(json.dumps(MOCK))
    doc["agents"] = acp_agents(["my-acp-agent"], [])
    write(ws, doc)
    rc, _, err = lorch(
        capsys, "config", "set", "-w", str(ws), "agents.builder.prompts.implement", "Do $thing"
    )
    assert rc == 2
    assert "$.agents.builder.prompts.implement: unknown placeholder $thing" in err


def test_set_refuses_an_index_past_the_end(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(ws, MOCK)
    rc, _, err = lorch(capsys, "config", "set", "-w", str(ws), "agents.builder.cmd[7]", "x")
    assert rc == 2 and "index 7 is past its end" in err


def test_set_on_a_broken_file_refuses_only_new_errors(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = json.loads(json.dumps(MOCK))
    doc["policy"] = {"max_rounds": 0}
    path = write(ws, doc)
    rc, out, _ = lorch(capsys, "config", "set", "-w", str(ws), "task.goal", "Greet")
    assert rc == 0 and "still has 1 error(s)" in out
    rc, _, _ = lorch(capsys, "config", "set", "-w", str(ws), "policy.max_rounds", "2")
    assert rc == 0
    assert json.loads(path.read_text())["policy"] == {"max_rounds": 2}


def test_set_prints_the_warnings_of_the_result(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write(ws, MOCK)
    rc, _, err = lorch(capsys, "config", "set", "-w", str(ws), "agents.builder.sandbox", "none")
    assert rc == 0
    assert err.startswith("warning: $.agents.builder.sandbox:")


def test_set_says_an_unfinished_run_recorded_the_previous_file(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lorch.store.derived_files import update_index

    write(ws, MOCK)
    entry = {
        "run_id": "run-20260101-000000-0123abcd",
        "task_id": "T-1",
        "status": "completed",
        "started_at": "2026-01-01T00:00:00Z",
        "updated_at": "2026-01-01T00:00:00Z",
        "ledger": "events/run-20260101-000000-0123abcd.ndjson",
    }
    update_index(ws, entry)
    rc, _, err = lorch(capsys, "config", "set", "-w", str(ws), "policy.max_rounds", "4")
    assert (rc, err) == (0, "")
    update_index(ws, {**entry, "status": "running"})
    rc, _, err = lorch(capsys, "config", "set", "-w", str(ws), "policy.max_rounds", "5")
    assert rc == 0
    assert err.startswith("note: run run-20260101-000000-0123abcd has not finished")
    assert "--accept-config-change" in err


def test_set_a_value_that_looks_like_an_option(
    ws: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(ws, MOCK)
    assert lorch(capsys, "config", "set", "-w", str(ws), "agents.builder.cmd[1]", "-type")[0] == 0
    assert json.loads(path.read_text())["agents"]["builder"]["cmd"][1] == "-type"


def test_one_line_files_stay_on_one_line(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(ws, MOCK, indent=None)
    assert lorch(capsys, "config", "set", "-w", str(ws), "policy.max_rounds", "4")[0] == 0
    assert path.read_text().count("\n") == 1


def test_unset_brings_the_default_back(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(json.dumps(MOCK))
    doc["policy"] = {"max_rounds": 4, "fsync": True}
    path = write(ws, doc)
    assert lorch(capsys, "config", "unset", "-w", str(ws), "policy.max_rounds")[0] == 0
    assert json.loads(path.read_text())["policy"] == {"fsync": True}
    assert lorch(capsys, "config", "get", "-w", str(ws), "policy.max_rounds") == (0, "10\n", "")
    rc, out, _ = lorch(capsys, "config", "unset", "-w", str(ws), "policy.max_rounds")
    assert rc == 0 and "is not set; nothing changed" in out
    assert lorch(capsys, "config", "unset", "-w", str(ws), "agents.builder.cmd[1]")[0] == 0
    assert json.loads(path.read_text())["agents"]["builder"]["cmd"] == ["mockagent", "builder"]


def test_unset_refuses_a_required_field(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(ws, MOCK)
    before = path.read_bytes()
    rc, _, err = lorch(capsys, "config", "unset", "-w", str(ws), "agents.reviewer")
    assert rc == 2 and "'reviewer' is a required property" in err
    assert path.read_bytes() == before


def test_set_without_a_file_says_so(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ws.mkdir()
    rc, _, err = lorch(capsys, "config", "set", "-w", str(ws), "policy.max_rounds", "3")
    assert rc == 2 and "no configuration file" in err


# -- check ------------------------------------------------------------------------


def check(
    capsys: pytest.CaptureFixture[str], ws: Path, *args: str
) -> tuple[int, list[dict[str, str]]]:
    rc, out, _ = lorch(capsys, "config", "check", "-w", str(ws), "--json", *args)
    doc = json.loads(out)
    assert doc["exit"] == rc
    return rc, doc["problems"]


def test_check_exit_codes(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(json.dumps(MOCK))
    write(ws, doc)
    assert lorch(capsys, "config", "check", "-w", str(ws), "--strict")[0] == 0
    doc["agents"]["builder"]["sandbox"] = "none"
    write(ws, doc)
    rc, out, _ = lorch(capsys, "config", "check", "-w", str(ws))
    assert rc == 0 and "0 error(s), 1 warning(s)" in out
    rc, out, _ = lorch(capsys, "config", "check", "-w", str(ws), "--strict")
    assert rc == 1
    assert "warning  $.agents.builder.sandbox:" in out and "fix: remove it" in out
    doc["policy"] = {"max_rounds": 0}
    write(ws, doc)
    rc, out, _ = lorch(capsys, "config", "check", "-w", str(ws))
    assert rc == 2 and "error    $.policy.max_rounds:" in out
    (ws / "lorch.json").write_text("{")
    rc, _, err = lorch(capsys, "config", "check", "-w", str(ws))
    assert rc == 2 and "invalid JSON at line 1" in err


def test_every_error_has_a_path_and_a_fix(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(json.dumps(MOCK))
    doc["policy"] = {"max_rounds": 0, "retry": {"max_atempts": 1}, "concurrency": 2}
    doc["agents"]["builder"]["transport"] = "grpc"
    del doc["agents"]["reviewer"]["cmd"]
    write(ws, doc)
    rc, problems = check(capsys, ws)
    assert rc == 2
    fixes = {p["path"]: p["fix"] for p in problems}
    assert fixes["$.policy.retry"] == "rename 'max_atempts' to 'max_attempts'"
    assert fixes["$.policy.max_rounds"].startswith("set a whole number >= 1 (review rounds")
    assert fixes["$.policy.concurrency"] == "set 1 or remove it"
    assert fixes["$.agents.builder.transport"].startswith('set one of "ndjson", "acp" (ndjson:')
    assert fixes["$.agents.reviewer"].startswith("add $.agents.reviewer.cmd: a list of non-empty")
    assert all(p["level"] == "error" and p["message"] for p in problems)


@pytest.mark.parametrize(
    ("version", "level", "says"),
    [
        ("2", "error", 'version 2 is newer than this lorch, which reads "1" and "1.0"'),
        ("1.1", "error", "version 1.1 is newer than this lorch"),
        ("0.9", "error", "version 0.9 was never a lorch.json format"),
        ("one", "error", '"one" is not a version'),
        (1, "error", "1 is a number"),
    ],
)
def test_check_versions(
    ws: Path, capsys: pytest.CaptureFixture[str], version: Any, level: str, says: str
) -> None:
    write(ws, {**MOCK, "version": version})
    rc, problems = check(capsys, ws)
    assert rc == 2
    assert [(p["path"], p["level"]) for p in problems] == [("$.version", level)]
    assert says in problems[0]["message"]


def test_both_spellings_of_version_1_are_current() -> None:
    assert configcheck.version_problem("1") is None
    assert configcheck.version_problem("1.0") is None


def test_an_older_known_version_warns_with_what_changed() -> None:
    known = {"1": "policy.backoff is in seconds (was policy.retry, ms)", "2": None}
    p = configcheck.version_problem("1", known)
    assert p is not None and p.level == "warning"
    assert p.message == (
        "version 1 is older than 2: policy.backoff is in seconds (was policy.retry, ms)"
    )
    assert configcheck.version_problem("1.0", known) == configcheck.Problem(
        "warning", "$.version", p.message.replace("version 1 ", "version 1.0 "), p.fix
    )
    assert configcheck.version_problem("2.0", known) is None
    assert p.fix == 'update the fields named, then set "version": "2"'
    q = configcheck.version_problem("3", known)
    assert q is not None and q.level == "error" and "newer" in q.message


def warned(capsys: pytest.CaptureFixture[str], ws: Path, doc: Any) -> dict[str, str]:
    write(ws, doc)
    rc, problems = check(capsys, ws, "--strict")
    assert rc == 1 and {p["level"] for p in problems} == {"warning"}
    return {p["path"]: p["message"] for p in problems}


def test_warnings(ws: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A known ACP agent without its key variable; an ACP builder with no test_cmd.
    doc = {**MOCK, "agents": acp_agents(["claude-agent-acp"], ["ANTHROPIC_BASE_URL"])}
    w = warned(capsys, ws, doc)
    assert (
        "ANTHROPIC_API_KEY or ANTHROPIC_AUTH_TOKEN, which pass_env does not list"
        in (w["$.agents.builder.pass_env"])
    )
    assert "task T-1 has no test_cmd" in w["$.task.test_cmd"]
    # Everything passed; Gemini with lorch's file service; a key written in the file.
    doc = {**MOCK, "task": {**MOCK["task"], "test_cmd": "true"}}
    doc["agents"] = acp_agents(["gemini", "--acp"], ["*"])
    doc["agents"]["reviewer"]["fs"] = True
    doc["agents"]["builder"]["env"] = {"GEMINI_API_KEY": "abcd"}
    w = warned(capsys, ws, doc)
    assert set(w) == {
        "$.agents.builder.pass_env",
        "$.agents.reviewer.pass_env",
        "$.agents.spec_maintainer.pass_env",
        "$.agents.reviewer.fs",
        "$.agents.builder.env.GEMINI_API_KEY",
    }
    # A timeout shorter than the heartbeat interval; fsync off.
    doc = json.loads(json.dumps(MOCK))
    doc["policy"] = {"timeouts_s": {"review": 5}, "fsync": False, "heartbeat_interval_s": 10}
    w = warned(capsys, ws, doc)
    assert set(w) == {"$.policy.timeouts_s.review", "$.policy.fsync"}
    assert (
        "review times out after 5 s, before the first heartbeat" in w["$.policy.timeouts_s.review"]
    )


def test_verbose_checks_the_environment_without_starting_agents(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("MY_AGENT_HOME", raising=False)
    doc = json.loads(json.dumps(MOCK))
    doc["agents"]["reviewer"] = {
        "transport": "acp",
        "cmd": ["claude-agent-acp"],
        "pass_env": ["ANTHROPIC_API_KEY", "HTTPS_PROXY"],
    }
    doc["agents"]["spec_maintainer"]["cmd"] = ["no-such-agent-anywhere"]
    doc["agents"]["spec_maintainer"]["pass_env"] = ["MY_AGENT_HOME"]
    doc["agents"]["builder"]["cmd"] = ["mockagent", "--script", "fixtures/missing.json"]
    doc["task"]["test_cmd"] = ["true"]
    write(ws, doc)
    # Without --verbose the file alone is fine.
    assert lorch(capsys, "config", "check", "-w", str(ws))[0] == 0
    rc, problems = check(capsys, ws, "--verbose")
    assert rc == 2
    found = {(p["path"], p["level"]): p["message"] for p in problems}
    assert (
        "'no-such-agent-anywhere' is not found on PATH"
        in found[("$.agents.spec_maintainer.cmd[0]", "error")]
    )
    assert "fixtures/missing.json" in found[("$.agents.builder.cmd", "error")]
    assert "MY_AGENT_HOME is not set" in found[("$.agents.spec_maintainer.pass_env", "warning")]
    assert "HTTPS_PROXY" not in " ".join(found.values())  # optional variables are not asked for
    assert not (ws / "events").exists() and not (ws / "logs").exists()  # nothing started


def test_verbose_says_what_holds(
    ws: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "set-for-the-test")
    bin_dir = ws.parent / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "claude-agent-acp"
    fake.write_text("#!/bin/sh\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    doc = {**MOCK, "agents": acp_agents(["claude-agent-acp"], CLAUDE_ENV)}
    doc["task"] = {**MOCK["task"], "test_cmd": "true"}
    write(ws, doc)
    rc, out, _ = lorch(capsys, "config", "check", "-w", str(ws), "--verbose", "--strict")
    assert rc == 0, out
    assert f"ok       agent builder: {fake}" in out
    assert "ok       key builder: ANTHROPIC_API_KEY set" in out
    assert "set-for-the-test" not in out


@pytest.mark.e2e
def test_concurrent_sets_through_the_real_binary_all_land(
    ws: Path, lorch_bin: str, clean_env: dict[str, str]
) -> None:
    path = write(ws, MOCK)
    procs = [
        subprocess.Popen(
            [lorch_bin, "config", "set", "-w", str(ws), "-s", f"agents.builder.env.V{i}", str(i)],
            env=clean_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for i in range(4)
    ]
    for p in procs:
        _, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    assert json.loads(path.read_text())["agents"]["builder"]["env"] == {
        f"V{i}": str(i) for i in range(4)
    }
    assert len(backups(ws)) == 4


@pytest.mark.parametrize("agent", [None, "claude-agent-acp", "codex-acp", "gemini"])
def test_the_first_runs_lorch_json_passes_a_strict_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], agent: str | None
) -> None:
    from lorch.app.firstrun import default_config

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if agent is not None:
        exe = bin_dir / agent
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    doc, _ = default_config(str(bin_dir))
    assert (agent is None) == ("transport" not in doc["agents"]["builder"])
    ws = tmp_path / "ws"
    write(ws, doc)
    assert lorch(capsys, "config", "check", "-w", str(ws), "--strict")[0] == 0
