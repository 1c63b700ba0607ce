"""``lorch config edit``: the real command on a terminal (pexpect) and with piped answers."""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pexpect
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lorch.agents.known_agents import GEMINI
from lorch.app.configedit import PRESETS, parse_answer

pytestmark = pytest.mark.e2e

DOCS = Path(__file__).resolve().parents[2] / "docs"
ROLES = ("builder", "reviewer", "spec_maintainer")
DOC: dict[str, Any] = {
    "version": "1",
    "task": {"id": "T-1", "goal": "Add a greeting"},
    "agents": {r: {"cmd": ["mockagent", "--type", r]} for r in ROLES},
    "policy": {"max_rounds": 3},
}
MENU = "lorch> Edit which section? t = task(s), a = agents, p = policy, s = save, q = quit:"
SAVE = "Save these changes to lorch.json? [y/N]:"
SECRET = "k3y-that-must-never-show-9f8e7d6c5b4a"


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "lorch.json").write_text(json.dumps(DOC, indent=2) + "\n")
    return ws


def piped(ws: Path, env: dict[str, str], *answers: str) -> subprocess.CompletedProcess[str]:
    """The editor with its answers on a pipe, one per line, then the end of input."""
    return subprocess.run(
        [sys.executable, "-m", "lorch", "config", "edit", "--workspace", str(ws)],
        input="".join(a + "\n" for a in answers),
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def spawn(ws: Path, env: dict[str, str]) -> Any:
    return pexpect.spawn(
        sys.executable,
        ["-m", "lorch", "config", "edit", "--workspace", str(ws)],
        env={**env, "NO_COLOR": "1"},
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 400),
    )


def finish(child: Any) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return int(child.exitstatus)


def check(ws: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lorch", "config", "check", "--workspace", str(ws)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def backups(ws: Path) -> list[Path]:
    return sorted((ws / "state" / "backups").glob("lorch.json.*"))


# -- piped answers ------------------------------------------------------------------


def test_piped_change_is_saved_with_a_backup(ws: Path, clean_env: dict[str, str]) -> None:
    before = (ws / "lorch.json").read_bytes()
    r = piped(ws, clean_env, "p", "5", ".", "s", "y")
    assert r.returncode == 0, r.stderr
    # Off a terminal each answer is echoed after its prompt.
    assert "lorch> policy.max_rounds [3]: 5\n" in r.stdout
    assert '-    "max_rounds": 3\n+    "max_rounds": 5\n' in r.stdout
    assert "lorch.json: policy.max_rounds changed (previous file: state/backups/" in r.stdout
    assert json.loads((ws / "lorch.json").read_text())["policy"] == {"max_rounds": 5}
    [kept] = backups(ws)
    assert kept.read_bytes() == before
    assert check(ws, clean_env).returncode == 0


def test_piped_invalid_answers_are_asked_again(ws: Path, clean_env: dict[str, str]) -> None:
    r = piped(ws, clean_env, "p", "0", "many", "4", ".", "s", "y")
    assert r.returncode == 0, r.stderr
    errors = [line for line in r.stdout.splitlines() if line.startswith("lorch: ")]
    assert errors == [
        "lorch: $.policy.max_rounds: 0 is less than the minimum of 1 (fix: set a whole number "
        ">= 1 (review rounds (and spec rounds) of a task before the run fails))",
        "lorch: $.policy.max_rounds: 'many' is not of type 'integer' (found \"many\") (fix: set a "
        "whole number >= 1 (review rounds (and spec rounds) of a task before the run fails))",
    ]
    assert r.stdout.count("lorch> policy.max_rounds [3]:") == 3
    assert json.loads((ws / "lorch.json").read_text())["policy"]["max_rounds"] == 4


def test_piped_help_comes_from_the_schema(ws: Path, clean_env: dict[str, str]) -> None:
    r = piped(ws, clean_env, "p", ".", "a", "reviewer", "", "", "", "?", ".", "", "q")
    assert r.returncode == 1
    assert (
        "$.agents.reviewer.pass_env: a list of strings (variables copied from lorch's" in r.stdout
    )
    assert "  default: []" in r.stdout
    assert "  answer: words separated by spaces" in r.stdout


def test_help_names_the_default_of_a_value_the_file_sets(
    ws: Path, clean_env: dict[str, str]
) -> None:
    r = piped(ws, clean_env, "p", "?", "q")
    assert "$.policy.max_rounds: a whole number >= 1 (review rounds" in r.stdout
    assert "  default: 10\n" in r.stdout


def test_piped_q_leaves_the_file_byte_identical(tmp_path: Path, clean_env: dict[str, str]) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    # A layout the editor would not write: quitting must not rewrite it.
    text = json.dumps(DOC, indent=4).replace('"policy"', '"policy"  ') + "\n"
    (ws / "lorch.json").write_text(text)
    r = piped(ws, clean_env, "t", "", "A louder greeting", "q")
    assert r.returncode == 1
    assert r.stdout.endswith("quit: nothing written, lorch.json unchanged\n")
    assert (ws / "lorch.json").read_text() == text
    assert backups(ws) == []


def test_piped_end_of_input_quits_without_saving(ws: Path, clean_env: dict[str, str]) -> None:
    before = (ws / "lorch.json").read_bytes()
    r = piped(ws, clean_env, "p", "7")
    assert r.returncode == 1
    assert r.stdout.endswith("end of input: nothing written, lorch.json unchanged\n")
    assert (ws / "lorch.json").read_bytes() == before


def test_piped_declined_diff_leaves_the_file(ws: Path, clean_env: dict[str, str]) -> None:
    before = (ws / "lorch.json").read_bytes()
    r = piped(ws, clean_env, "t", "", '"q"', ".", "s", "n")
    assert r.returncode == 1
    assert '-    "goal": "Add a greeting"\n+    "goal": "q"\n' in r.stdout
    assert r.stdout.endswith("not saved: lorch.json unchanged\n")
    assert (ws / "lorch.json").read_bytes() == before
    assert backups(ws) == []


def test_piped_no_changes_is_not_a_write(ws: Path, clean_env: dict[str, str]) -> None:
    before = (ws / "lorch.json").read_bytes()
    r = piped(ws, clean_env, "p", ".", "s")
    assert r.returncode == 0
    assert "no changes: lorch.json unchanged" in r.stdout
    assert (ws / "lorch.json").read_bytes() == before
    assert backups(ws) == []


def test_piped_known_agent_gets_the_documented_block(ws: Path, clean_env: dict[str, str]) -> None:
    env = {k: v for k, v in clean_env.items() if k not in GEMINI.keys}
    r = piped(ws, env, "a", "reviewer", "4", "", "", "", "", "", "", "s", "y")
    assert r.returncode == 0, r.stdout + r.stderr
    reviewer = json.loads((ws / "lorch.json").read_text())["agents"]["reviewer"]
    assert reviewer == {"transport": "acp", "cmd": ["gemini", "--acp"], "pass_env": GEMINI.pass_env}
    assert reviewer == documented_block("Gemini CLI")
    assert "GEMINI_API_KEY" in reviewer["pass_env"]
    assert "Gemini CLI reads its key from GEMINI_API_KEY or GOOGLE_API_KEY" in r.stdout
    assert "note: none of GEMINI_API_KEY, GOOGLE_API_KEY is set in lorch's environment now" in (
        r.stdout
    )
    result = check(ws, clean_env)
    assert result.returncode == 0, result.stdout
    assert "valid, no warnings" in result.stdout


def test_piped_known_agent_for_a_missing_role_keeps_others(
    ws: Path, clean_env: dict[str, str]
) -> None:
    doc = json.loads((ws / "lorch.json").read_text())
    doc["agents"]["builder"]["sandbox"] = "bwrap"
    (ws / "lorch.json").write_text(json.dumps(doc, indent=2) + "\n")
    answers = ["a", "orchestration", "1", *[""] * 6, "builder", "2", *[""] * 5, "", "s", "y"]
    r = piped(ws, {**clean_env, "ANTHROPIC_API_KEY": "x"}, *answers)
    assert r.returncode == 0, r.stdout + r.stderr
    agents = json.loads((ws / "lorch.json").read_text())["agents"]
    assert agents["orchestration"] == {"cmd": ["mockagent", "--type", "orchestration"]}
    # The known agent replaces the command and keys; the role's sandbox stays.
    assert agents["builder"] == {**documented_block("Claude Code"), "sandbox": "bwrap"}
    assert 'as root (containers, CI) it also needs "env": {"IS_SANDBOX": "1"}' in r.stdout
    assert "note: none of" not in r.stdout  # the key is set
    # An ACP builder without a test command loads, with a warning shown at once.
    assert "warning: $.task.test_cmd: task T-1 has no test_cmd" in r.stdout


def test_piped_new_task_with_words_and_a_command(ws: Path, clean_env: dict[str, str]) -> None:
    answers = ["t", *[""] * 5, "y", "T-2", "Say hello twice", "", "src/a.py 'src/b c.py'"]
    answers += ["python3 -m pytest -q", "n", "s", "y"]
    r = piped(ws, clean_env, *answers)
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((ws / "lorch.json").read_text())["tasks"] == [
        {
            "id": "T-2",
            "goal": "Say hello twice",
            "expected_outputs": ["src/a.py", "src/b c.py"],
            "test_cmd": "python3 -m pytest -q",
        }
    ]


def test_piped_remove_restores_the_default(ws: Path, clean_env: dict[str, str]) -> None:
    r = piped(ws, clean_env, "p", "-", ".", "p", ".", "s", "y")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lorch> policy.max_rounds [default 10]:" in r.stdout
    assert json.loads((ws / "lorch.json").read_text())["policy"] == {}


def test_policy_is_asked_in_the_spelling_the_file_uses(
    tmp_path: Path, clean_env: dict[str, str]
) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "lorch.json").write_bytes((DOCS / "examples" / "spec-8.2.json").read_bytes())
    r = piped(ws, clean_env, "p", "", "5", ".", "s", "y")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "lorch> policy.retry.max_attempts [3]: 5\n" in r.stdout
    policy = json.loads((ws / "lorch.json").read_text())["policy"]
    assert policy["retry"]["max_attempts"] == 5 and "max_attempts" not in policy


def test_secrets_are_masked_in_prompts_and_diff(ws: Path, clean_env: dict[str, str]) -> None:
    doc = json.loads((ws / "lorch.json").read_text())
    doc["agents"]["builder"]["env"] = {"SERVICE_TOKEN": SECRET}
    (ws / "lorch.json").write_text(json.dumps(doc, indent=2) + "\n")
    r = piped(ws, clean_env, "a", "builder", "", "", "", "", '{"MODEL": "fast"}', "", "", "s", "n")
    assert r.returncode == 1
    assert 'lorch> agents.builder.env [{"SERVICE_TOKEN": "***"}]:' in r.stdout
    assert '-        "SERVICE_TOKEN": "***"' in r.stdout
    assert SECRET not in r.stdout + r.stderr


def test_an_error_already_in_the_file_is_listed_and_can_be_fixed(
    ws: Path, clean_env: dict[str, str]
) -> None:
    doc = json.loads((ws / "lorch.json").read_text())
    doc["policy"]["max_rounds"] = 0
    (ws / "lorch.json").write_text(json.dumps(doc, indent=2) + "\n")
    # The goal changes although the file has an error; then the error is fixed.
    r = piped(ws, clean_env, "t", "", "Greet", ".", "p", "2", ".", "s", "y")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "error: $.policy.max_rounds: 0 is less than the minimum of 1" in r.stdout
    assert check(ws, clean_env).returncode == 0
    saved = json.loads((ws / "lorch.json").read_text())
    assert (saved["task"]["goal"], saved["policy"]["max_rounds"]) == ("Greet", 2)


def test_unreadable_file_is_one_line(tmp_path: Path, clean_env: dict[str, str]) -> None:
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "lorch.json").write_text("{not json")
    r = piped(ws, clean_env, "q")
    assert r.returncode == 2
    [line] = r.stderr.splitlines()
    assert line.startswith("lorch: ") and "lorch.json: invalid JSON" in line


# -- on a terminal ------------------------------------------------------------------


def test_tty_change_with_help_and_a_refused_answer(ws: Path, clean_env: dict[str, str]) -> None:
    before = (ws / "lorch.json").read_bytes()
    child = spawn(ws, clean_env)
    child.expect_exact(MENU)
    child.sendline("p")
    child.expect_exact("lorch> policy.max_rounds [3]:")
    child.sendline("?")
    child.expect_exact("$.policy.max_rounds: a whole number >= 1 (review rounds")
    child.expect_exact("lorch> policy.max_rounds [3]:")
    child.sendline("-2")
    child.expect_exact("lorch: $.policy.max_rounds: -2 is less than the minimum of 1 (fix: ")
    child.expect_exact("lorch> policy.max_rounds [3]:")
    child.sendline("6")
    child.expect_exact("lorch> policy.max_attempts [default 3]:")
    child.sendline(".")
    child.expect_exact(MENU)
    child.sendline("s")
    child.expect_exact('+    "max_rounds": 6')
    child.expect_exact(SAVE)
    child.sendline("y")
    child.expect_exact("lorch.json: policy.max_rounds changed (previous file: state/backups/")
    assert finish(child) == 0
    assert json.loads((ws / "lorch.json").read_text())["policy"]["max_rounds"] == 6
    assert [p.read_bytes() for p in backups(ws)] == [before]


def test_tty_q_leaves_the_file_byte_identical(ws: Path, clean_env: dict[str, str]) -> None:
    before = (ws / "lorch.json").read_bytes()
    child = spawn(ws, clean_env)
    child.expect_exact(MENU)
    child.sendline("a")
    child.expect_exact("Which role?")
    child.sendline("builder")
    child.expect_exact("agents.builder: a known agent, 1-6 (Enter keeps its agent):")
    child.sendline("3")
    child.expect_exact("lorch> agents.builder.cmd [")
    child.sendline("q")
    child.expect_exact("quit: nothing written, lorch.json unchanged")
    assert finish(child) == 1
    assert (ws / "lorch.json").read_bytes() == before
    assert backups(ws) == []


def test_tty_declined_then_known_agent_accepted(ws: Path, clean_env: dict[str, str]) -> None:
    child = spawn(ws, clean_env)
    child.expect_exact(MENU)
    child.sendline("a")
    child.expect_exact("Which role?")
    child.sendline("spec_maintainer")
    child.expect_exact("a known agent, 1-6")
    child.sendline("4")
    for _ in range(5):
        child.expect(r"lorch> agents\.spec_maintainer\.\w+ \[")
        child.sendline("")
    child.expect_exact("Which role?")
    child.sendline("")
    child.expect_exact(MENU)
    child.sendline("s")
    child.expect_exact('+        "gemini",')
    child.expect_exact(SAVE)
    child.sendline("")  # the default is No
    child.expect_exact("not saved: lorch.json unchanged")
    assert finish(child) == 1
    assert json.loads((ws / "lorch.json").read_text()) == DOC


def test_tty_ctrl_c_writes_nothing(ws: Path, clean_env: dict[str, str]) -> None:
    before = (ws / "lorch.json").read_bytes()
    child = spawn(ws, clean_env)
    child.expect_exact(MENU)
    child.sendline("p")
    child.expect_exact("lorch> policy.max_rounds [3]:")
    child.sendline("9")
    child.expect_exact("lorch> policy.max_attempts")
    child.sendintr()
    child.expect_exact("lorch: aborted")
    assert finish(child) == 130
    assert (ws / "lorch.json").read_bytes() == before


def test_tty_file_changed_meanwhile_is_not_overwritten(ws: Path, clean_env: dict[str, str]) -> None:
    child = spawn(ws, clean_env)
    child.expect_exact(MENU)
    child.sendline("p")
    child.expect_exact("lorch> policy.max_rounds [3]:")
    child.sendline("8")
    child.expect_exact("lorch> policy.max_attempts")
    child.sendline(".")
    child.expect_exact(MENU)
    # Another `lorch config set` while the editor waits.
    subprocess.run(
        [sys.executable, "-m", "lorch", "config", "set", "-w", str(ws), "policy.max_restarts", "2"],
        check=True,
        capture_output=True,
        env=clean_env,
        timeout=60,
    )
    child.sendline("s")
    child.expect_exact(SAVE)
    child.sendline("y")
    child.expect_exact("changed on disk while `lorch config edit` ran")
    assert finish(child) == 2
    assert json.loads((ws / "lorch.json").read_text())["policy"] == {
        "max_rounds": 3,
        "max_restarts": 2,
    }


# -- the known agents and the answers -------------------------------------------------


def documented_block(name: str) -> dict[str, Any]:
    """The role docs/real-agents.md gives the agent under its ``### name`` heading."""
    text = (DOCS / "real-agents.md").read_text()
    section = text.split(f"\n### {name}\n", 1)[1].split("\n### ", 1)[0]
    block = re.search(r"```json\n(.*?)```", section, re.S)
    assert block is not None, name
    return dict(json.loads("{" + block.group(1) + "}").popitem()[1])


@pytest.mark.parametrize("preset", PRESETS, ids=lambda p: p.name)
def test_presets_are_what_the_docs_say(preset: Any) -> None:
    block = preset.block("reviewer")
    if preset.name == "mockagent":
        mock = json.loads((DOCS / "examples" / "mock.json").read_text())
        assert block == mock["agents"]["reviewer"]
    elif preset.name == "OpenHands":
        # The docs give the environment variant in prose: the flag and pass_env.
        text = (DOCS / "real-agents.md").read_text()
        section = text.split("\n### OpenHands\n", 1)[1].split("\n### ", 1)[0]
        assert documented_block("OpenHands")["cmd"] + ["--override-with-envs"] == block["cmd"]
        assert "--override-with-envs" in section
        assert f'"pass_env": {json.dumps(block["pass_env"])}' in section
    else:
        assert block == documented_block(preset.name)
    assert block.get("pass_env") or preset.name == "mockagent"


@pytest.mark.parametrize(
    ("path", "text", "value"),
    [
        ("$.task.goal", "42", "42"),
        ("$.task.goal", '"q"', "q"),
        ("$.agents.builder.cmd", "gemini --acp", ["gemini", "--acp"]),
        ("$.agents.builder.cmd", '["a b"]', ["a b"]),
        ("$.agents.builder.transport", "acp", "acp"),
        ("$.task.test_cmd", "make test", "make test"),
        ("$.task.test_cmd", '["make", "test"]', ["make", "test"]),
        ("$.policy.max_rounds", "7", 7),
        ("$.policy.fsync", "false", False),
        ("$.agents.builder.env", '{"A": "b"}', {"A": "b"}),
    ],
)
def test_parse_answer(path: str, text: str, value: Any) -> None:
    assert parse_answer(path, text) == value


@given(
    st.sampled_from(
        ["$.task.goal", "$.agents.builder.cmd", "$.task.test_cmd", "$.policy.max_rounds"]
    ),
    st.text(alphabet="[]{}\"'\\ ab1:,", max_size=40)
    | st.builds(lambda n: "[" * n, st.integers(0, 5000)),
)
def test_parse_answer_never_raises_but_value_error(path: str, text: str) -> None:
    with contextlib.suppress(ValueError):
        parse_answer(path, text)


@pytest.mark.parametrize(
    ("path", "text"),
    [("$.agents.builder.cmd", "'unclosed"), ("$.agents.builder.cmd", "[1,"), ("$.task.id", '"x')],
)
def test_parse_answer_refuses(path: str, text: str) -> None:
    with pytest.raises(ValueError):
        parse_answer(path, text)


def edit_docs() -> str:
    text = (DOCS / "configuration.md").read_text()
    return text.split("\n### `lorch config edit`\n", 1)[1].split("\n## ", 1)[0]


def test_the_docs_table_lists_each_preset() -> None:
    rows = re.findall(r"^\| (\d) \| ([^|]+) \| `([^`]+)`", edit_docs(), re.M)
    assert [(int(n), name.strip(), cmd) for n, name, cmd in rows] == [
        (n, p.name, p.shown_cmd("ROLE")) for n, p in enumerate(PRESETS, 1)
    ]


def test_the_docs_scripted_example_works(ws: Path, clean_env: dict[str, str]) -> None:
    line = re.search(r"^(printf .*) \| lorch config edit$", edit_docs(), re.M)
    assert line is not None
    edit = shlex.join([sys.executable, "-m", "lorch", "config", "edit", "-w", str(ws)])
    r = subprocess.run(
        f"{line.group(1)} | {edit}",
        shell=True,
        capture_output=True,
        text=True,
        env=clean_env,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((ws / "lorch.json").read_text())["agents"]["reviewer"] == documented_block(
        "Gemini CLI"
    )
