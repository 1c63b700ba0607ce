"""The pure reducer: given ledger records, what comes next."""

from __future__ import annotations

from typing import Any

from lorch.core.state import State
from lorch.core.steps import Check, Finish, Send
from lorch.core.workflow import next_step
from lorch.wire import protocol

TASK = {"id": "T-0042", "goal": "g"}
SNAP = "snap-0123456789ab"
DEADLINE = "2026-11-24T13:00:00Z"


def sysev(name: str, payload: dict[str, Any], corr: str = "run-1") -> dict[str, Any]:
    return {
        "kind": "event",
        "message_id": protocol.new_message_id("evt"),
        "correlation_id": corr,
        "task_id": "T-0042",
        "from": {"agent_type": "system"},
        "event": name,
        "payload": payload,
        "occurred_at": "2026-11-24T12:00:00Z",
    }


def answer(
    cmd: dict[str, Any], name: str, status: str | None = None, **payload: Any
) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "kind": "event",
        "message_id": protocol.new_message_id("evt"),
        "correlation_id": cmd["correlation_id"],
        "task_id": "T-0042",
        "from": {"agent_type": cmd["to"]["agent_type"]},
        "event": name,
        "payload": payload,
        "occurred_at": "2026-11-24T12:00:00Z",
    }
    if status:
        ev["status"] = status
    return ev


class Sim:
    """Drives the reducer the way the runner does, with scripted answers."""

    def __init__(self, **policy: Any) -> None:
        self.state = State()
        self.records: list[dict[str, Any]] = []
        self.add(sysev("system.run_started", {"run_id": "run-1", "task": TASK, "policy": policy}))
        self.add(sysev("system.snapshot", {"snapshot_id": SNAP}))

    def add(self, record: dict[str, Any]) -> None:
        protocol.validate_message(record)
        self.records.append(record)
        self.state.fold(record)

    def step(self) -> Send | Check | Finish:
        return next_step(
            self.state, fresh=lambda action: (protocol.new_message_id("cmd"), DEADLINE)
        )

    def send(self) -> dict[str, Any]:
        step = self.step()
        assert isinstance(step, Send), step
        self.add(step.command)
        return step.command

    def reply(
        self, cmd: dict[str, Any], name: str, status: str | None = None, **payload: Any
    ) -> None:
        self.add(answer(cmd, name, status, **payload))
        step = self.step()
        if isinstance(step, Check):
            self.state.accept()


PASS = {"tests": {"status": "pass", "summary": "ok"}}


def run_loop(sim: Sim, reviews: list[str], specs: list[str]) -> list[str]:
    actions = []
    reviews, specs = list(reviews), list(specs)
    while True:
        step = sim.step()
        if isinstance(step, Finish):
            actions.append(f"finish:{step.status}")
            return actions
        cmd = sim.send()
        actions.append(cmd["action"])
        if cmd["action"] in ("implement", "implement_changes"):
            sim.reply(cmd, "builder.completed", "success", **PASS)
        elif cmd["action"] == "review":
            sim.reply(cmd, "review.completed", reviews.pop(0))
        else:
            sim.reply(cmd, specs.pop(0))


def test_happy_path() -> None:
    assert run_loop(Sim(), ["approved"], ["spec.updated"]) == [
        "implement",
        "review",
        "update_spec",
        "finish:completed",
    ]


def test_review_loop_and_spec_loop() -> None:
    actions = run_loop(
        Sim(),
        ["changes_requested", "approved", "approved"],
        ["spec.changes_requested", "spec.no_changes_needed"],
    )
    assert actions == [
        "implement",
        "review",
        "implement_changes",
        "review",
        "update_spec",
        "implement_changes",
        "review",
        "update_spec",
        "finish:completed",
    ]


def test_each_round_has_its_own_key_and_rounds_are_numbered() -> None:
    sim = Sim()
    run_loop(sim, ["changes_requested", "changes_requested", "approved"], ["spec.updated"])
    cmds = [r for r in sim.records if r["kind"] == "command"]
    keys = [c["idempotency_key"] for c in cmds]
    assert len(set(keys)) == len(keys)
    assert [(c["action"], c["inputs"]["round"]) for c in cmds] == [
        ("implement", 1),
        ("review", 1),
        ("implement_changes", 2),
        ("review", 2),
        ("implement_changes", 3),
        ("review", 3),
        ("update_spec", 1),
    ]
    assert [c["correlation_id"] for c in cmds][:3] == [
        "corr-T-0042-1",
        "corr-T-0042-2",
        "corr-T-0042-3",
    ]


def test_replay_gives_the_same_next_command_key() -> None:
    sim = Sim()
    cmd = sim.send()
    sim.reply(cmd, "builder.completed", "success", **PASS)
    nxt = sim.step()
    assert isinstance(nxt, Send)
    replayed = State()
    for r in sim.records:
        replayed.fold(r)
    again = next_step(replayed, fresh=lambda action: ("cmd-x", DEADLINE))
    assert isinstance(again, Check)  # the answer was never checked in the replay
    replayed.accept()
    again = next_step(replayed, fresh=lambda action: ("cmd-y", DEADLINE))
    assert isinstance(again, Send)
    assert again.command["idempotency_key"] == nxt.command["idempotency_key"]
    assert again.command["correlation_id"] == nxt.command["correlation_id"]


def test_pending_command_is_resent_with_the_same_key() -> None:
    sim = Sim()
    cmd = sim.send()
    step = sim.step()  # sent, never answered (crash)
    assert isinstance(step, Send) and step.resend
    assert step.command["idempotency_key"] == cmd["idempotency_key"]
    assert step.command["correlation_id"] == cmd["correlation_id"]
    assert step.command["message_id"] != cmd["message_id"]


def test_completed_key_is_never_resent() -> None:
    sim = Sim()
    cmd = sim.send()
    sim.reply(cmd, "builder.completed", "success", **PASS)
    step = sim.step()
    assert isinstance(step, Send) and step.command["action"] == "review"
    last = sim.state.last_accepted
    assert last is not None and last.ik == cmd["idempotency_key"] and sim.state.accepted == 1
    assert step.command["idempotency_key"] != cmd["idempotency_key"]


def test_error_event_retries_then_fails_with_the_code() -> None:
    sim = Sim(max_attempts=2)
    cmd = sim.send()
    sim.add(answer(cmd, "error", code="rate_limited", message="slow down"))
    step = sim.step()
    assert isinstance(step, Send) and step.command["retry"]["attempt"] == 1
    assert step.command["idempotency_key"] == cmd["idempotency_key"]
    sim.add(step.command)
    sim.add(answer(step.command, "error", code="rate_limited", message="slow down"))
    final = sim.step()
    assert isinstance(final, Finish) and final.status == "failed"
    assert "builder" in final.reason and "rate_limited" in final.reason


def test_rejected_artifacts_lead_to_a_resend() -> None:
    sim = Sim()
    cmd = sim.send()
    sim.add(answer(cmd, "builder.completed", "success", **PASS))
    assert isinstance(sim.step(), Check)
    sim.add(
        sysev(
            "system.command_failed",
            {
                "idempotency_key": cmd["idempotency_key"],
                "attempt": 0,
                "reason": "x",
                "code": "artifact_mismatch",
            },
            cmd["correlation_id"],
        )
    )
    step = sim.step()
    assert isinstance(step, Send) and step.resend and step.command["retry"]["attempt"] == 1


def test_failing_tests_fail_the_run_unless_allowed() -> None:
    for allowed, expected in ((False, "failed"), (True, "running")):
        sim = Sim(allowed_failures=allowed)
        cmd = sim.send()
        sim.reply(
            cmd, "builder.completed", "success", tests={"status": "fail", "summary": "2 failed"}
        )
        step = sim.step()
        if expected == "failed":
            assert (
                isinstance(step, Finish) and "T-0042" in step.reason and "2 failed" in step.reason
            )
        else:
            assert isinstance(step, Send) and step.command["action"] == "review"


def test_missing_tests_payload_fails() -> None:
    sim = Sim()
    cmd = sim.send()
    sim.reply(cmd, "builder.completed", "success")
    step = sim.step()
    assert isinstance(step, Finish) and "payload.tests" in step.reason


def test_round_cap() -> None:
    actions = run_loop(Sim(max_rounds=3), ["changes_requested"] * 5, [])
    assert actions[-1] == "finish:failed"
    assert actions.count("review") == 3


def test_fresh_ids_are_asked_for_only_when_a_command_is_built() -> None:
    sim = Sim()
    cmd = sim.send()
    sim.add(answer(cmd, "builder.completed", "success", **PASS))
    asked: list[str] = []

    def fresh(action: str) -> tuple[str, str]:
        asked.append(action)
        return "cmd-z", DEADLINE

    assert isinstance(next_step(sim.state, fresh=fresh), Check)
    assert asked == []
    sim.state.accept()
    step = next_step(sim.state, fresh=fresh)
    assert isinstance(step, Send)
    assert asked == ["review"]
    assert step.command["message_id"] == "cmd-z"


def test_checkpoints_fold_into_the_pending_command_across_attempts() -> None:
    sim = Sim()
    step = sim.step()
    assert isinstance(step, Send)
    ik = step.command["idempotency_key"]
    pre = {"role": "builder", "idempotency_key": ik, "phase": "pre", "tree": "a" * 40}
    sim.add(sysev("system.checkpoint", pre, step.command["correlation_id"]))
    assert sim.state.pre_checkpoint(ik) == "a" * 40
    sim.add(step.command)
    assert sim.state.pending is not None and sim.state.pending.pre == "a" * 40
    sim.add(answer(step.command, "error", code="boom", message="boom"))
    retry = sim.step()
    assert isinstance(retry, Send) and retry.resend
    sim.add(retry.command)
    assert sim.state.pending.pre == "a" * 40, "a retry keeps the first attempt's checkpoint"
    sim.add(answer(retry.command, "builder.completed", "success", **PASS))
    post = {**pre, "phase": "post", "tree": "b" * 40, "changed": ["x"], "changed_count": 1}
    sim.add(sysev("system.checkpoint", post, retry.command["correlation_id"]))
    assert sim.state.pending.post == "b" * 40
    sim.state.accept()
    review = sim.step()
    assert isinstance(review, Send)
    assert sim.state.pre_checkpoint(review.command["idempotency_key"]) is None
    sim.add(review.command)
    assert sim.state.pending is not None and sim.state.pending.pre is None


def test_a_resume_does_not_accept_the_answer_it_has_yet_to_check() -> None:
    # Crash after an answer, before lorch checked its artifacts: the resume's
    # own record must leave the answer to be checked, not accept it.
    sim = Sim()
    cmd = sim.send()
    sim.add(answer(cmd, "builder.completed", "success", **PASS))
    sim.add(sysev("system.resumed", {"torn_tail": None, "orphans_killed": []}))
    assert isinstance(sim.step(), Check)
    assert sim.state.accepted == 0


# -- verdicts: decided from the bytes lorch captured as the review's turn ended ------------

REVIEW = "reviews/T-0042.json"


def reviewed(event_status: str, captured: str | None, *, named: bool = True) -> str:
    """The command after a review answered ``event_status`` whose file was captured holding
    ``captured`` (JSON text; None: no capture)."""
    sim = Sim()
    cmd = sim.send()
    sim.reply(cmd, "builder.completed", "success", **PASS)
    review = sim.send()
    payload = {"summary": "s", **({"review_path": REVIEW} if named else {})}
    sim.add(answer(review, "review.completed", event_status, **payload))
    if captured is not None:
        capture = {"idempotency_key": review["idempotency_key"], "role": "reviewer"}
        sim.add(sysev("system.verdict", {**capture, "path": REVIEW, "text": captured}))
    step = sim.step()
    assert isinstance(step, Check), step  # the capture does not settle the answer
    sim.state.accept()
    return str(sim.send()["action"])


def test_the_captured_verdict_decides_when_the_answer_names_it() -> None:
    approved = '{"status": "approved", "summary": "ok"}'
    assert reviewed("approved", approved) == "update_spec"
    assert reviewed("changes_requested", '{"status": "changes_requested"}') == "implement_changes"


def test_a_captured_verdict_that_disagrees_with_the_answer_approves_nothing() -> None:
    # The file was flipped to approved as the turn ended: changes are asked for.
    assert reviewed("changes_requested", '{"status": "approved"}') == "implement_changes"
    assert reviewed("approved", '{"status": "changes_requested"}') == "implement_changes"


def test_the_answer_decides_when_no_verdict_file_counts() -> None:
    assert reviewed("approved", None) == "update_spec"
    assert reviewed("approved", '{"status": "changes_requested"}', named=False) == "update_spec"
    assert reviewed("approved", "not json [[[") == "update_spec"
    assert reviewed("approved", "[" * 60_000) == "update_spec"  # too deep: not a verdict
