"""The first run never changes a file it did not create (MASTER-SPEC §8.1 auto-creation)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest

from lorch.agents.known_agents import CODEX_PROVIDER
from lorch.app import config, firstrun

from .conftest import Runner, run_ids

pytestmark = pytest.mark.e2e

LORCH_DIRS = {"events", "state", "receipts", "logs", "snapshots", "transcripts", ".mockagent"}


def populate(project: Path) -> dict[str, bytes]:
    """A small project: files at several depths, a hidden folder, a file named like a demo one."""
    files = {
        "src/greeting.py": b"print('mine')\n",
        "specs/SPEC.md": b"# my own spec\n",
        "README.md": b"my project\n",
        ".git/HEAD": b"ref: refs/heads/main\n",
        "fixtures/builder.json": b'{"mine": true}\n',
    }
    for rel, data in files.items():
        (project / rel).parent.mkdir(parents=True, exist_ok=True)
        (project / rel).write_bytes(data)
    return {rel: hashlib.sha256(data).digest() for rel, data in files.items()}


def snapshot(project: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for p in project.rglob("*"):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(project).as_posix()] = (
                hashlib.sha256(p.read_bytes()).digest(),
                stat.S_IMODE(st.st_mode),
            )
    return out


def no_acp_path() -> dict[str, str]:
    # Only system directories: no ACP agent the test machine may have installed.
    return {"PATH": os.defpath}


def test_a_populated_project_gets_only_lorch_json(tmp_path: Path, lorch: Runner) -> None:
    project = tmp_path / "p"
    populate(project)
    before = snapshot(project)
    r = lorch("run", "--workspace", str(project), env=no_acp_path())
    assert r.returncode == 2, r.stderr
    after = snapshot(project)
    assert set(after) - set(before) == {"lorch.json"}
    assert {k: after[k] for k in before} == before
    assert sorted(p.name for p in project.iterdir()) == sorted(
        [".git", "README.md", "fixtures", "lorch.json", "specs", "src"]
    )
    assert "wrote" in r.stderr and "changed nothing else" in r.stderr
    assert "$.tasks" in r.stderr and f"lorch run --workspace {project}` again" in r.stderr
    assert "asks what to do" in r.stderr
    created = config.load(project)
    assert {a.cmd[0] for a in created.agents.values()} == {"mockagent"}
    assert all("--no-files" in a.cmd for a in created.agents.values())
    # No task: the next run starts intake, planned by an orchestrator that writes nothing.
    assert created.task is None and created.orchestration_enabled


def test_the_second_run_of_the_created_config_writes_no_project_file(
    tmp_path: Path, lorch: Runner
) -> None:
    project = tmp_path / "p"
    populate(project)
    assert lorch("run", "--workspace", str(project), env=no_acp_path()).returncode == 2
    before = snapshot(project)
    r = lorch(
        "run",
        "--workspace",
        str(project),
        "--instruction",
        "Implement specs/SPEC.md",
        "--yes",
        env=no_acp_path(),
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[lorch] tasks approved: plan specs/SPEC.md, tasks T-0001" in r.stdout
    after = snapshot(project)
    new = {k for k in set(after) - set(before) if k.split("/")[0] not in LORCH_DIRS}
    assert new == set()
    assert {k: after[k] for k in before} == before
    assert len(run_ids(project)) == 1


def test_lorch_alone_in_a_project_is_as_safe(tmp_path: Path, lorch_bin: str, clean_env) -> None:  # type: ignore[no-untyped-def]
    import subprocess

    project = tmp_path / "p"
    populate(project)
    before = snapshot(project)
    r = subprocess.run(
        [lorch_bin],
        cwd=project,
        capture_output=True,
        text=True,
        env={**clean_env, **no_acp_path()},
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    after = snapshot(project)
    assert set(after) - set(before) == {"lorch.json"}
    assert {k: after[k] for k in before} == before


def test_a_hidden_entry_alone_makes_a_project(tmp_path: Path, lorch: Runner) -> None:
    project = tmp_path / "repo"
    (project / ".git").mkdir(parents=True)
    r = lorch("run", "--workspace", str(project), env=no_acp_path())
    assert r.returncode == 2
    assert sorted(p.name for p in project.iterdir()) == [".git", "lorch.json"]


def test_a_new_folder_gets_the_demo_and_runs_it(tmp_path: Path, lorch: Runner) -> None:
    demo = tmp_path / "demo"
    r = lorch("run", "--workspace", str(demo))
    assert r.returncode == 0, r.stderr
    assert "did not exist: created it with the demo" in r.stdout
    assert (demo / "src" / "greeting.py").is_file()
    assert "[lorch] DONE" in r.stdout


def test_an_empty_folder_gets_the_demo(tmp_path: Path, lorch: Runner) -> None:
    demo = tmp_path / "empty"
    demo.mkdir()
    r = lorch("run", "--workspace", str(demo))
    assert r.returncode == 0, r.stderr
    assert "was empty: created the demo there" in r.stdout


def test_a_mistyped_deeper_path_is_not_created(tmp_path: Path, lorch: Runner) -> None:
    r = lorch("run", "--workspace", str(tmp_path / "no-such" / "demo"))
    assert r.returncode == 2
    assert "no such folder" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "no-such").exists()


def test_an_existing_lorch_json_is_never_replaced(tmp_path: Path, lorch: Runner) -> None:
    (tmp_path / "lorch.json").write_text('{"version": "1"}')
    r = lorch("run", "--workspace", str(tmp_path))
    assert r.returncode == 2 and "'agents' is a required property" in r.stderr
    assert (tmp_path / "lorch.json").read_text() == '{"version": "1"}'


def test_an_installed_acp_agent_is_chosen_when_lorch_can_drive_it(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "codex-acp"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    # With the model provider that reads its key (see known_agents.CODEX_PROVIDER).
    assert firstrun.find_acp_agent(str(bin_dir)) == ["codex-acp", *CODEX_PROVIDER]
    assert firstrun.find_acp_agent(str(tmp_path)) is None
    cfg, which = firstrun.default_config(str(bin_dir))
    if firstrun.acp_supported():
        assert cfg["agents"]["builder"] == {
            "transport": "acp",
            "cmd": ["codex-acp", *CODEX_PROVIDER],
            "pass_env": [
                "OPENAI_API_KEY", "CODEX_API_KEY", "OPENAI_BASE_URL",
                "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY",
            ],
        }  # fmt: skip
        assert "codex-acp" in which and "OPENAI_API_KEY or CODEX_API_KEY" in which
    else:
        assert cfg["agents"]["builder"]["cmd"][0] == "mockagent"
    config.parse(json.loads(json.dumps(cfg)), tmp_path / "lorch.json")


@pytest.mark.parametrize(
    ("exe", "argv", "keys"),
    [
        ("claude-agent-acp", ["claude-agent-acp"], ["ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"]),
        ("codex-acp", ["codex-acp", *CODEX_PROVIDER], ["OPENAI_API_KEY", "CODEX_API_KEY"]),
        ("gemini", ["gemini", "--acp"], ["GEMINI_API_KEY", "GOOGLE_API_KEY"]),
    ],
)
def test_the_first_run_writes_each_agents_current_command_and_its_variables(
    tmp_path: Path, exe: str, argv: list[str], keys: list[str]
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / exe).write_text("#!/bin/sh\n")
    (bin_dir / exe).chmod(0o755)
    cfg, which = firstrun.default_config(str(bin_dir))
    for role in ("builder", "reviewer", "spec_maintainer"):
        spec = cfg["agents"][role]
        assert spec["cmd"] == argv and spec["transport"] == "acp"
        assert spec["pass_env"][: len(keys)] == keys
        assert {"HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY"} <= set(spec["pass_env"])
    assert " or ".join(keys) in which
    config.parse(json.loads(json.dumps(cfg)), tmp_path / "lorch.json")


def test_the_first_run_names_the_other_agents_it_found(tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for exe in ("gemini", "codex-acp"):
        (bin_dir / exe).write_text("#!/bin/sh\n")
        (bin_dir / exe).chmod(0o755)
    cfg, which = firstrun.default_config(str(bin_dir))
    assert cfg["agents"]["builder"]["cmd"] == ["codex-acp", *CODEX_PROVIDER]
    assert "also found: gemini" in which


def test_the_docs_give_each_agent_the_command_and_variables_the_first_run_writes() -> None:
    """docs/real-agents.md and the first run agree: one source of truth, checked."""
    from lorch.agents.known_agents import CLAUDE, CODEX, GEMINI

    docs = (Path(__file__).resolve().parents[2] / "docs" / "real-agents.md").read_text()
    for agent in (CLAUDE, CODEX, GEMINI):
        role = firstrun.acp_role(agent)
        shown = f'"cmd": {json.dumps(role["cmd"])},\n  "pass_env": {json.dumps(role["pass_env"])}'
        assert shown in docs, f"docs/real-agents.md does not show {agent.name} as: {shown}"
