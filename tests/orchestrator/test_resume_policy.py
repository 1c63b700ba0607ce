"""Resume decides from the ledger: the recorded policy applies; any change to lorch.json
is refused, naming every changed key, unless the user says yes (it is then recorded)."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import pytest

from lorch.app.config import load, run_policy
from lorch.app.drift import compare, identity
from lorch.core import policy as policies

from .conftest import Runner, records

pytestmark = pytest.mark.e2e


def crashed(scenario: Any, lorch: Runner, name: str = "review-loop", at: int = 6) -> Path:
    ws: Path = scenario(name)
    r = lorch("run", "--workspace", str(ws), env={"LORCH_CRASH_AT": f"after:{at}"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    return ws


def edit(ws: Path, change: Any) -> None:
    path = ws / "lorch.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw, indent=2))


def resumed_record(ws: Path) -> dict[str, Any]:
    (rec,) = [r for r in records(ws) if r.get("event") == "system.resumed"]
    return rec


def test_a_changed_limit_is_refused_naming_it(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = crashed(scenario, lorch)
    before = records(ws)
    edit(ws, lambda raw: raw.setdefault("policy", {}).update(max_restarts=0, max_rounds=1))
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 2
    assert "changed since run" in r.stderr
    assert "policy.max_restarts, policy.max_rounds (" in r.stderr
    assert "policy.max_restarts: 5 -> 0" in r.stderr
    assert "policy.max_rounds:" in r.stderr
    assert "--accept-config-change" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1  # one line, no traceback
    assert records(ws) == before  # nothing recorded, nothing sent


def test_an_accepted_change_is_recorded_and_applies(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = crashed(scenario, lorch)
    edit(ws, lambda raw: raw.setdefault("policy", {}).update(max_rounds=1))
    r = lorch("resume", "--workspace", str(ws), "--accept-config-change")
    # review-loop asks for changes twice: one round is not enough any more.
    assert r.returncode == 1 and "review round cap of 1 reached" in r.stderr, r.stderr
    assert "policy.max_rounds (policy.max_rounds: 10 -> 1); applying it, as accepted" in r.stdout
    payload = resumed_record(ws)["payload"]
    assert payload["policy"]["max_rounds"] == 1
    assert payload["config_changed"] == ["policy.max_rounds"]
    assert payload["config_digest"] == load(ws).digest


def test_the_recorded_limits_apply_whatever_lorch_json_says(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    # Without the change accepted, an edit reverted before resume leaves no
    # trace, and the run finishes under the limits it started with.
    ws = crashed(scenario, lorch)
    original = (ws / "lorch.json").read_text()
    edit(ws, lambda raw: raw.setdefault("policy", {}).update(max_rounds=1))
    assert lorch("resume", "--workspace", str(ws)).returncode == 2
    (ws / "lorch.json").write_text(original)
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 0, r.stderr
    assert "changed" not in r.stdout
    assert "config_changed" not in resumed_record(ws)["payload"]


def test_a_changed_agent_is_refused_naming_its_keys(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    # A builder that rewrote the reviewer's entry and killed lorch gets no new reviewer.
    ws = crashed(scenario, lorch)
    before = records(ws)
    edit(ws, lambda raw: raw["agents"]["reviewer"].setdefault("env", {}).update(EXTRA="1"))
    edit(ws, lambda raw: raw["agents"]["spec_maintainer"].update(cmd=["true"]))
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 2, r.stderr
    assert "agents.reviewer.env.EXTRA, agents.spec_maintainer.cmd." in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert records(ws) == before


def test_an_accepted_agent_change_is_recorded_once(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = crashed(scenario, lorch)
    edit(ws, lambda raw: raw["agents"]["reviewer"].setdefault("env", {}).update(EXTRA="1"))
    r = lorch("resume", "--workspace", str(ws), "--accept-config-change")
    assert r.returncode == 0, r.stderr
    assert "lorch.json changed since the run recorded it: agents.reviewer.env.EXTRA;" in r.stdout
    assert resumed_record(ws)["payload"]["config_changed"] == ["agents.reviewer.env.EXTRA"]
    # The accepted configuration is the run's now: the next resume has nothing to refuse.
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 0 and "already completed" in r.stdout, r.stderr


def test_a_changed_task_would_change_keys_and_is_refused(scenario, lorch: Runner) -> None:  # type: ignore[no-untyped-def]
    ws = crashed(scenario, lorch)
    edit(ws, lambda raw: raw["task"].update(goal="another goal"))
    r = lorch("resume", "--workspace", str(ws))
    assert r.returncode == 2
    assert "task T-0042: goal (the run's keys)" in r.stderr


def test_compare_lists_every_policy_field_that_changed(tmp_path: Path) -> None:
    from lorch.app.scenarios import materialize

    ws = tmp_path / "ws"
    materialize("happy-path", ws)
    config = load(ws)
    started = {"policy": run_policy(config).as_record(), **identity(config)}
    recorded = policies.from_record(started["policy"], policies.RunPolicy())
    task = dict(config.task or {})
    assert not compare(started, recorded, task, config).any
    raw = json.loads((ws / "lorch.json").read_text())
    raw.setdefault("policy", {})["backoff"] = {"initial_s": 2.0, "max_s": 1}
    raw["agents"]["builder"]["timeouts_s"] = {"implement": 5}
    (ws / "lorch.json").write_text(json.dumps(raw))
    drift = compare(started, recorded, task, load(ws))
    assert drift.changed == [
        "agents.builder.timeouts_s.implement",
        "policy.backoff.factor",  # removed: a key that is gone is a change too
        "policy.backoff.initial_s",  # max_s was 1 already
    ]
    assert drift.binding == [
        "policy.backoff.initial_s: 0.05 -> 2.0",
        "policy.roles.builder.timeouts_s.implement: 600.0 -> 5.0",
    ]
    assert drift.accepted(load(ws))["policy"]["roles"]["builder"]["timeouts_s"]["implement"] == 5.0


def test_a_policy_recorded_by_an_older_lorch_takes_defaults_for_what_it_lacks() -> None:
    old = {"max_rounds": 4, "max_attempts": 2, "max_restarts": 1, "allowed_failures": True}
    p = policies.from_record(old, policies.RunPolicy())
    assert (p.max_rounds, p.max_attempts, p.max_restarts, p.allowed_failures) == (4, 2, 1, True)
    assert p.backoff_initial_s == 1.0 and p.timeout("builder", "implement") == 600.0
    again = policies.from_record(p.as_record(), policies.RunPolicy(max_rounds=99))
    assert again == p  # what is recorded wins over the fallback
