"""Preflight: every role is started and checked before any agent gets a command.

Each broken role below stops ``lorch run`` with exit 2 and one line naming the
role and the cause, before the builder has been sent anything; ``lorch doctor``
runs the same check and fails the same role; the run is resumable once fixed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from lorch.app.scenarios import materialize

from .conftest import Runner, records, terminal_events

pytestmark = pytest.mark.e2e


def _edit(ws: Path, change: Callable[[dict[str, Any]], None]) -> None:
    cfg = json.loads((ws / "lorch.json").read_text())
    change(cfg)
    (ws / "lorch.json").write_text(json.dumps(cfg))


def _rewrite(path: Path, text: str) -> None:
    path.unlink()  # the scenario's copy may be read-only or a link
    path.write_text(text)


def _exits(ws: Path) -> None:
    code = "import sys; sys.stderr.write('no model configured\\n'); sys.exit(5)"
    _edit(ws, lambda c: c["agents"]["reviewer"].update(cmd=[sys.executable, "-c", code]))


def _broken_fixture(ws: Path) -> None:
    _rewrite(ws / "fixtures" / "reviewer.json", '{"responses": {"review": {"dealy_ms": 1}}}')


def _silent(ws: Path) -> None:
    code = "import sys; sys.stdin.read()"  # alive, never a heartbeat
    _edit(
        ws,
        lambda c: c["agents"]["reviewer"].update(
            cmd=[sys.executable, "-c", code], timeouts_s={"start": 1}
        ),
    )


def _acp_silent(ws: Path) -> None:
    path = ws / "agents" / "reviewer.json"
    script = json.loads(path.read_text())
    _rewrite(path, json.dumps({**script, "initialize": "never"}))
    _edit(ws, lambda c: c["agents"]["reviewer"].update(timeouts_s={"start": 2}))


CASES = {
    "exits at start": (
        "happy-path",
        _exits,
        "agent reviewer did not start: exited (code 5) before its first heartbeat; "
        "its stderr said: no model configured",
    ),
    "broken fixture": (
        "happy-path",
        _broken_fixture,
        "$.agents.reviewer.cmd: fixture ",
    ),
    "never heartbeats": (
        "happy-path",
        _silent,
        "agent reviewer did not start: its first heartbeat did not come within 1 s",
    ),
    "acp never answers initialize": (
        "acp-exactly-once",
        _acp_silent,
        "agent reviewer did not start: no answer to ACP initialize in 2 s",
    ),
}


def _builder_got_nothing(ws: Path) -> None:
    recs = records(ws) if (ws / "events").is_dir() else []
    assert [r for r in recs if r.get("kind") == "command"] == []
    # Nor did it start any work of its own accord (mockagent journals what it gets).
    assert (
        not (ws / ".mockagent" / "builder" / "journal.ndjson").exists()
        or not (ws / ".mockagent" / "builder" / "journal.ndjson").read_text().strip()
    )
    assert not (ws / "journal" / "builder.txt").exists()  # the ACP builder's


@pytest.mark.parametrize("case", list(CASES))
def test_a_role_that_cannot_start_stops_the_run_before_any_command(
    case: str, tmp_path: Path, lorch: Runner
) -> None:
    name, breaks, says = CASES[case]
    ws = tmp_path / "ws"
    materialize(name, ws)
    breaks(ws)
    r = lorch("run", "--workspace", str(ws), timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lorch: ") and says in lines[0], r.stderr
    assert "reviewer" in lines[0]
    _builder_got_nothing(ws)
    d = lorch("doctor", "--workspace", str(ws), timeout=300)
    assert d.returncode == 1
    failing = [ln for ln in d.stdout.splitlines() if ln.startswith("FAIL")]
    assert len(failing) == 1 and " reviewer: " in failing[0], d.stdout
    assert says.removeprefix("agent reviewer did not start: ") in failing[0]


def test_the_run_is_resumable_once_the_role_is_fixed(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    good = json.loads((ws / "lorch.json").read_text())["agents"]["reviewer"]["cmd"]
    _exits(ws)
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 2 and "once fixed: lorch resume --workspace" in r.stderr
    exited = [x for x in records(ws) if x.get("event") == "system.agent_exited"]
    assert [e["payload"]["role"] for e in exited] == ["reviewer"]
    assert "exited (code 5) before its first heartbeat" in exited[0]["payload"]["reason"]
    # Still broken: resume checks again and stops again, sending nothing.
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 2 and "agent reviewer did not start" in r.stderr
    _builder_got_nothing(ws)
    _edit(ws, lambda c: c["agents"]["reviewer"].update(cmd=good))
    # A fix in lorch.json is a change to the run's configuration: said, then accepted.
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 2 and "recorded it: agents.reviewer.cmd." in r.stderr
    r = lorch("resume", "--workspace", str(ws), "--accept-config-change")
    assert r.returncode == 0, r.stdout + r.stderr
    assert terminal_events(ws) == [
        "builder.completed",
        "review.completed:approved",
        "spec.updated",
    ]


def test_resume_checks_every_role_before_it_sends_again(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    first = lorch("run", "--workspace", str(ws), env={"LORCH_CRASH_AT": "after:6"})
    assert first.returncode != 0
    recs = records(ws)
    assert recs[-1]["kind"] == "command" and recs[-1]["action"] == "implement"
    good = json.loads((ws / "lorch.json").read_text())["agents"]["reviewer"]["cmd"]
    _exits(ws)
    r = lorch("resume", "--workspace", str(ws), "--accept-config-change")
    assert r.returncode == 2 and "agent reviewer did not start" in r.stderr, r.stderr
    assert [x for x in records(ws) if x.get("kind") == "command"] == [recs[-1]]  # not re-sent
    _edit(ws, lambda c: c["agents"]["reviewer"].update(cmd=good))
    r = lorch("resume", "--workspace", str(ws), "--accept-config-change")
    assert r.returncode == 0, r.stdout + r.stderr


def test_agents_without_heartbeats_start_at_once(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    # The original lorch.json files start mockagent with -no-heartbeat: nothing to wait for.
    ws = scenario("happy-path")
    _edit(ws, lambda c: [a["cmd"].append("-no-heartbeat") for a in c["agents"].values()])
    r = lorch("run", "--workspace", str(ws))
    assert r.returncode == 0, r.stdout + r.stderr
    d = lorch("doctor", "--workspace", str(ws))
    assert d.returncode == 0 and "nothing to wait for" in d.stdout
