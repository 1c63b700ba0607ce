"""The real prompts on a terminal (pexpect): approve, pick a plan, clarify, conflict, decline,
and Ctrl-C at a prompt followed by ``lorch resume``."""

from __future__ import annotations

import collections
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pexpect
import pytest

from tests.intake.conftest import decisions, proposal, task_commands

pytestmark = pytest.mark.e2e


def spawn(lorch_bin: str, env: dict[str, str], ws: Path, *args: str) -> Any:
    child = pexpect.spawn(
        lorch_bin,
        [*args, "--workspace", str(ws)],
        env={**env, "NO_COLOR": "1"},
        encoding="utf-8",
        timeout=60,
        dimensions=(50, 200),
    )
    return child


def finish(child: Any) -> int:
    child.expect(pexpect.EOF)
    child.close()
    return int(child.exitstatus if child.exitstatus is not None else -child.signalstatus)


def test_approve_on_a_terminal(
    intake_ws: Callable[..., Path], lorch_bin: str, clean_env: dict[str, str]
) -> None:
    ws = intake_ws()
    child = spawn(lorch_bin, clean_env, ws, "run")
    child.expect_exact(
        'lorch> What should I do? (e.g. "Use PLAN.md and manage its implementation")'
    )
    child.sendline("Manage PLAN.md")
    child.expect_exact("lorch> Which greeting word should the modules use?")
    child.sendline("Hello")
    child.expect_exact("1. PLAN.md (confidence 0.90)")
    child.expect_exact("lorch> Which plan should I use?")
    child.sendline("")
    child.expect_exact("lorch> Which tasks should I run?")
    child.sendline("1,2")
    child.expect_exact("[lorch] DONE")
    assert finish(child) == 0
    assert {d["payload"]["source"] for d in decisions(ws)} == {"tty"}
    assert len(task_commands(ws)) == 6


def test_pick_a_plan_after_more_options(
    intake_ws: Callable[..., Path], lorch_bin: str, clean_env: dict[str, str]
) -> None:
    ws = intake_ws(
        {
            "responses": {
                "intake": proposal("T-1"),
                "task_discovery": proposal("T-3", plans=("PLAN.md", "docs/alt.md")),
            }
        }
    )
    child = spawn(lorch_bin, clean_env, ws, "run", "--instruction", "Manage PLAN.md")
    child.expect_exact("lorch> Which plan should I use?")
    child.sendline("m")
    child.expect_exact("2. docs/alt.md (confidence 0.80)")
    child.expect_exact("lorch> Which plan should I use?")
    child.sendline("2")
    child.expect_exact("lorch> Which tasks should I run?")
    child.sendline("")
    child.expect_exact("[lorch] DONE")
    assert finish(child) == 0
    assert decisions(ws)[-1]["payload"]["approved_plan"] == "docs/alt.md"
    assert {t for t, _ in task_commands(ws)} == {"T-3"}


CONFLICT = {
    "events": [
        {
            "type": "orchestration.plan_conflict",
            "payload": {
                "conflicts": [{"paths": ["PLAN.md", "PLAN-v2.md"], "reason": "both define T-1"}],
                "suggested_resolution": "use PLAN-v2.md",
            },
        }
    ]
}


def test_plan_conflict_pick_one(
    intake_ws: Callable[..., Path], lorch_bin: str, clean_env: dict[str, str]
) -> None:
    ws = intake_ws({"responses": {"intake": {"sequence": [CONFLICT, proposal("T-1")]}}})
    child = spawn(lorch_bin, clean_env, ws, "run", "--instruction", "Manage the plans")
    child.expect_exact("PLAN.md vs PLAN-v2.md: both define T-1")
    child.expect_exact("suggested: use PLAN-v2.md")
    child.expect_exact("lorch> Which plan should I use? [number, m, a]")
    child.sendline("2")
    child.expect_exact("lorch> Which plan should I use? [1, number, m, n to decline]")
    child.sendline("1")
    child.expect_exact("lorch> Which tasks should I run?")
    child.sendline("all")
    child.expect_exact("[lorch] DONE")
    assert finish(child) == 0
    conflict = next(d for d in decisions(ws) if d["payload"]["step"] == "conflict")
    assert conflict["payload"]["approved_plan"] == "PLAN-v2.md"
    assert (ws / "PLAN.md").read_text().startswith("# Greeting plan")  # never edited


def test_plan_conflict_abort(
    intake_ws: Callable[..., Path], lorch_bin: str, clean_env: dict[str, str]
) -> None:
    ws = intake_ws({"responses": {"intake": CONFLICT}})
    child = spawn(lorch_bin, clean_env, ws, "run", "--instruction", "x")
    child.expect_exact("lorch> Which plan should I use? [number, m, a]")
    child.sendline("a")
    child.expect_exact("run aborted: intake aborted by the user at the conflict prompt")
    assert finish(child) == 1
    assert decisions(ws)[-1]["status"] == "aborted"
    assert task_commands(ws) == []


def test_decline_on_a_terminal(
    intake_ws: Callable[..., Path], lorch_bin: str, clean_env: dict[str, str]
) -> None:
    ws = intake_ws({"responses": {"intake": proposal("T-1")}})
    child = spawn(lorch_bin, clean_env, ws, "run", "--instruction", "x")
    child.expect_exact("lorch> Which plan should I use?")
    child.sendline("n")
    child.expect_exact("declined by the user at the plan prompt")
    assert finish(child) == 1
    assert task_commands(ws) == []


def test_ctrl_c_at_a_prompt_then_resume_asks_only_that_question(
    intake_ws: Callable[..., Path], lorch_bin: str, clean_env: dict[str, str]
) -> None:
    ws = intake_ws()
    child = spawn(lorch_bin, clean_env, ws, "run")
    child.expect_exact("lorch> What should I do?")
    child.sendline("Manage PLAN.md")
    child.expect_exact("lorch> Which greeting word should the modules use?")
    child.sendline("Hello")
    child.expect_exact("lorch> Which plan should I use?")
    child.sendintr()
    child.expect_exact("Resume with: lorch resume")
    assert finish(child) == 130
    child = spawn(lorch_bin, clean_env, ws, "resume")
    index = child.expect_exact(
        ["lorch> What should I do?", "lorch> Which greeting", "lorch> Which plan should I use?"]
    )
    assert index == 2, "resume asked a question the ledger already answers"
    child.sendline("1")
    child.expect_exact("lorch> Which tasks should I run?")
    child.sendline("")
    child.expect_exact("[lorch] DONE")
    assert finish(child) == 0
    asked = collections.Counter(d["payload"]["question"] for d in decisions(ws))
    assert max(asked.values()) == 1 and len(asked) == 4
    assert len(task_commands(ws)) == 6
