"""The engine on a fake transport and a fake clock: no subprocess, no waiting.

Each agent is a :class:`FakePort` whose answers a test scripts; the inbox
advances the fake clock by the time the engine would have waited, so
timeouts, heartbeat loss, restarts and backoff take no wall time.
"""

from __future__ import annotations

import copy
import dataclasses
import random
import tempfile
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorch.agents.transport import Inbox, Incoming, SendContext
from lorch.core.policy import RolePolicy, RunPolicy
from lorch.core.state import State
from lorch.core.workflow import replay
from lorch.engine.loop import Engine, Outcome
from lorch.store import ledger
from lorch.wire.errors import AgentError, FramingError
from lorch.wire.redact import Redactor
from tests.conftest import examples

RUN_ID = "run-20261201-120000-0badc0de"
TASK = {"id": "T-1", "title": "a task"}


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class FakeInbox(Inbox):
    """Items in order; waiting only moves the fake clock."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__()
        self.clock = clock
        self.queue: deque[Incoming] = deque()
        self.slept: list[float] = []

    def post(self, item: Incoming) -> None:
        self.queue.append(item)

    def requeue(self, items: list[Incoming]) -> None:
        self.queue.extendleft(reversed(items))

    def get(self, timeout: float) -> Incoming | None:
        if self.queue:
            return self.queue.popleft()
        self.clock.t += timeout
        return None

    def wait(self, seconds: float, stop: threading.Event | None = None) -> None:
        self.slept.append(seconds)
        self.clock.t += seconds


Script = Callable[["FakePort", dict[str, Any]], None]


class FakePort:
    def __init__(
        self, role: str, generation: int, inbox: Inbox, script: Script, heartbeats: bool
    ) -> None:
        self.role = role
        self.generation = generation
        # Above any pid_max: never a real process (and never signalled here anyway).
        self.pid = self.pgid = 2**22 + generation
        self.start_time = None
        self.argv = [f"fake-{role}"]
        self.sends_heartbeats = heartbeats
        self.ready_within: float | None = None  # ready once started, unless a test says
        self.awaits = "its first heartbeat"
        self.last_stderr = ""
        self.inbox = inbox
        self.script = script
        self.sent: list[tuple[dict[str, Any], bytes, SendContext]] = []
        self.running = True
        self.accepts_input = True
        self.cancelled = 0

    def send(self, command: dict[str, Any], line: bytes, context: SendContext) -> bool:
        if not self.accepts_input:
            return False
        self.sent.append((command, line, context))
        self.script(self, command)
        return True

    def cancel(self) -> None:
        self.cancelled += 1

    def alive(self) -> bool:
        return self.running

    def close_input(self) -> None:
        pass

    def stop(self, grace: float = 2.0) -> int | None:
        self.running = False
        return 0

    def kill(self) -> int | None:
        self.running = False
        return -9

    # what a script does
    def emit(self, event: str, cmd: dict[str, Any], **fields: Any) -> None:
        self.post("event", message=message(self.role, event, cmd, **fields))

    def post(self, kind: Any, **kw: Any) -> None:
        self.inbox.post(Incoming(self.role, self.generation, kind, **kw))


def message(role: str, event: str, cmd: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {
        "kind": "event",
        "message_id": f"evt-{role}-{event}-{cmd['message_id']}",
        "correlation_id": cmd["correlation_id"],
        "task_id": cmd["task_id"],
        "from": {"agent_type": role},
        "event": event,
        "payload": {},
        "occurred_at": "2026-12-01T12:00:00Z",
        **fields,
    }


def good(port: FakePort, cmd: dict[str, Any]) -> None:
    """A well-behaved agent: the happy answer of its role."""
    if port.role == "builder":
        port.emit("builder.completed", cmd, payload={"tests": {"status": "pass", "summary": ""}})
    elif port.role == "reviewer":
        port.emit("review.completed", cmd, status="approved")
    else:
        port.emit("spec.updated", cmd)


class FakeAgents:
    def __init__(self, inbox: Inbox, scripts: dict[str, Script], heartbeats: bool = False):
        self.inbox = inbox
        self.scripts = scripts
        self.heartbeats = heartbeats
        self.started: list[FakePort] = []
        self.fail_start: set[str] = set()
        self.fail_restart: set[str] = set()  # roles whose second start fails
        self.exactly_once: set[str] = set()  # roles lorch checkpoints
        # What a role's agent does as it starts (post its ready item, exit, ...);
        # a role with one here has a start-up check to pass (ready_within).
        self.startup: dict[str, Callable[[FakePort], None]] = {}
        self.bad_config: dict[str, str] = {}  # role -> what check() says

    def roles(self) -> list[str]:
        return ["builder", "reviewer", "spec_maintainer"]

    def check(self, role: str) -> None:
        from lorch.wire.errors import ConfigError

        if role in self.bad_config:
            raise ConfigError(self.bad_config[role])

    def checkpointed(self, role: str) -> bool:
        return role in self.exactly_once

    def start(
        self, role: str, generation: int, run_id: str, snapshot_id: str | None, inbox: Inbox
    ) -> FakePort:
        if role in self.fail_start or (role in self.fail_restart and self.ports(role)):
            raise AgentError(f"agent {role}: cannot start 'fake-{role}'")
        port = FakePort(role, generation, inbox, self.scripts.get(role, good), self.heartbeats)
        self.started.append(port)
        if role in self.startup:
            port.ready_within = 5.0
            self.startup[role](port)
        return port

    def ports(self, role: str) -> list[FakePort]:
        return [p for p in self.started if p.role == role]


class Quiet:
    def say(self, text: str) -> None:
        pass

    def record(self, record: dict[str, Any]) -> None:
        pass


POLICY = RunPolicy(
    max_attempts=3,
    max_restarts=2,
    heartbeat_misses=3,
    backoff_initial_s=1.0,
    backoff_factor=2.0,
    backoff_max_s=60.0,
    roles={
        role: RolePolicy(heartbeat_interval_s=10.0, timeouts_s={"implement": 100.0})
        for role in ("builder", "reviewer", "spec_maintainer")
    },
)


class Rig:
    def __init__(
        self,
        tmp_path: Path,
        scripts: dict[str, Script] | None = None,
        *,
        policy: RunPolicy = POLICY,
        heartbeats: bool = False,
    ) -> None:
        self.ws = tmp_path / "ws"
        self.ws.mkdir()
        self.clock = FakeClock()
        self.inbox = FakeInbox(self.clock)
        self.agents = FakeAgents(self.inbox, scripts or {}, heartbeats)
        self.policy = policy
        log, _ = ledger.Ledger.open(self.ws / "events" / f"{RUN_ID}.ndjson", fsync=False)
        self.engine = Engine.build(
            self.ws,
            log,
            self.agents,
            Quiet(),
            Redactor([]),
            clock=self.clock,
            rng=random.Random(5),
            inbox=self.inbox,
        )

    def run(self, task: dict[str, Any] = TASK) -> Outcome:
        e = self.engine
        try:
            e.recorder.start_run(
                RUN_ID, dict(task), self.policy, {"config_digest": "sha256:" + "0" * 64}
            )
            e.recorder.take_snapshot()
            return e.drive()
        finally:
            e.close()

    def records(self) -> list[dict[str, Any]]:
        return list(ledger.read(self.ws / "events" / f"{RUN_ID}.ndjson"))

    def events(self, name: str) -> list[dict[str, Any]]:
        return [r for r in self.records() if r.get("event") == name]

    def commands(self) -> list[dict[str, Any]]:
        return [r for r in self.records() if r["kind"] == "command"]


def test_happy_path_sends_each_command_after_it_is_recorded(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    outcome = rig.run()
    assert outcome.status == "completed", outcome
    cmds = rig.commands()
    assert [c["action"] for c in cmds] == ["implement", "review", "update_spec"]
    sent = [(p.role, c["message_id"]) for p in rig.agents.started for c, _, _ in p.sent]
    assert sorted(sent) == sorted((c["to"]["agent_type"], c["message_id"]) for c in cmds)
    for port in rig.agents.started:
        for cmd, line, context in port.sent:
            assert line == ledger_line(rig, cmd["message_id"])  # the very bytes recorded
            assert context == SendContext(checkpoint=None)
    assert len(list((rig.ws / "receipts" / "T-1").glob("step-*.json"))) == 3
    assert rig.inbox.slept == []  # nothing failed: no backoff


def ledger_line(rig: Rig, message_id: str) -> bytes:
    raw = (rig.ws / "events" / f"{RUN_ID}.ndjson").read_bytes()
    # The very bytes the agent got, plus the chain field only the ledger carries.
    return next(
        ledger.unchained(ln) + b"\n" for ln in raw.split(b"\n") if message_id.encode() in ln
    )


def silent_once() -> Script:
    calls = {"n": 0}

    def script(port: FakePort, cmd: dict[str, Any]) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            good(port, cmd)

    return script


def test_a_command_that_times_out_is_resent_with_its_key_after_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"builder": silent_once()})
    assert rig.run().status == "completed"
    failed = rig.events("system.command_failed")
    assert [f["payload"]["code"] for f in failed] == ["timeout"]
    assert failed[0]["payload"]["reason"] == (
        "implement timed out after 100 s; builder said nothing"
    )
    first, again = [c for c in rig.commands() if c["action"] == "implement"]
    assert first["idempotency_key"] == again["idempotency_key"]
    assert first["correlation_id"] == again["correlation_id"]
    assert again["retry"]["attempt"] == 1
    builders = rig.agents.ports("builder")
    assert len(builders) == 2 and not builders[0].running  # killed, then a new one
    (restart,) = rig.events("system.agent_restarted")
    assert restart["payload"]["restarts"] == 1 and restart["payload"]["reason"] == "timeout"
    (slept,) = rig.inbox.slept  # the backoff before the restart, within its first ceiling
    assert 0 <= slept <= 1.0 and round(slept, 3) == restart["payload"]["delay_s"]


def test_a_timeout_quotes_the_last_message_and_stderr_line_of_the_attempt(
    tmp_path: Path,
) -> None:
    calls = {"n": 0}

    def talks_then_hangs(port: FakePort, cmd: dict[str, Any]) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            return good(port, cmd)
        port.emit("log", cmd, payload={"message": "Retrying \x1b[2J the model call"})
        port.last_stderr = "fetch failed: ECONNREFUSED"

    rig = Rig(tmp_path, {"builder": talks_then_hangs})
    assert rig.run().status == "completed"
    (failed,) = rig.events("system.command_failed")
    assert failed["payload"]["reason"] == (
        'implement timed out after 100 s; builder last said "Retrying \\x1b[2J the model call"; '
        "builder's last stderr line: fetch failed: ECONNREFUSED"
    )


def beat_once_then_silent() -> Script:
    """The first builder heartbeats once when it gets its command, then says nothing."""
    calls = {"n": 0}

    def script(port: FakePort, cmd: dict[str, Any]) -> None:
        calls["n"] += 1
        if calls["n"] > 1:
            good(port, cmd)
        else:
            port.post("heartbeat")

    return script


def test_lost_heartbeats_make_the_agent_unhealthy(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"builder": beat_once_then_silent()}, heartbeats=True)
    assert rig.run().status == "completed"
    (failed,) = rig.events("system.command_failed")
    assert failed["payload"]["code"] == "heartbeat_timeout"
    assert failed["payload"]["reason"] == "no heartbeat from builder for 3 intervals of 10 s"


def test_an_agent_that_never_beats_is_unhealthy_after_its_start_up_grace(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"builder": silent_once()}, heartbeats=True)
    assert rig.run().status == "completed"
    (failed,) = rig.events("system.command_failed")
    assert failed["payload"]["code"] == "heartbeat_timeout"
    # The policy's 3 × 10 s is more than the 10 s start-up grace: it is what counts.
    assert failed["payload"]["reason"] == "no first heartbeat from builder within 30 s of its start"


def test_heartbeats_keep_a_slow_agent_alive_until_its_timeout(tmp_path: Path) -> None:
    # The first builder beats whenever lorch waits but never answers: the
    # heartbeat watch never fires; the command's own timeout (100 s) does.
    beating: list[FakePort] = []

    def script(port: FakePort, cmd: dict[str, Any]) -> None:
        if port.generation == 1:
            beating.append(port)
        else:
            good(port, cmd)

    rig = Rig(tmp_path, {"builder": script}, heartbeats=True)
    real_get = rig.inbox.get

    def get(timeout: float) -> Incoming | None:
        if not rig.inbox.queue and beating and beating[-1].running:
            rig.clock.t += timeout
            return Incoming("builder", beating[-1].generation, "heartbeat")
        return real_get(timeout)

    rig.inbox.get = get  # type: ignore[method-assign]
    assert rig.run().status == "completed"
    (failed,) = rig.events("system.command_failed")
    assert failed["payload"]["code"] == "timeout"


def dies(port: FakePort, cmd: dict[str, Any]) -> None:
    port.last_stderr = "boom"
    port.running = False
    port.post("exit")


def test_restarts_are_capped_and_the_run_fails_naming_the_agent(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"builder": dies}, policy=dataclasses.replace(POLICY, max_attempts=9))
    outcome = rig.run()
    assert outcome.status == "failed"
    assert outcome.reason.startswith("agent builder failed after 2 restarts: exited with code")
    restarts = rig.events("system.agent_restarted")
    assert [r["payload"]["restarts"] for r in restarts] == [1, 2]
    exits = rig.events("system.agent_exited")
    assert len(exits) == 3
    failed = rig.events("system.command_failed")
    assert all(f["payload"]["code"] == "agent_exited" for f in failed)
    assert "boom" in failed[0]["payload"]["reason"]


def test_backoff_grows_between_restarts_within_its_ceiling(tmp_path: Path) -> None:
    policy = dataclasses.replace(POLICY, max_restarts=4, max_attempts=9)
    rig = Rig(tmp_path, {"builder": dies}, policy=policy)
    assert rig.run().status == "failed"
    slept = rig.inbox.slept
    assert len(slept) == 4
    for n, s in enumerate(slept):
        assert 0 <= s <= min(60.0, 1.0 * 2.0**n)
    delays = [r["payload"]["delay_s"] for r in rig.events("system.agent_restarted")]
    assert delays == [round(s, 3) for s in slept]


def test_a_protocol_error_fails_the_attempt_and_retries(tmp_path: Path) -> None:
    calls = {"n": 0}

    def garbage_once(port: FakePort, cmd: dict[str, Any]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            err = FramingError("not JSON", size=7, prefix=b"garbage")
            port.post("error", error=err, raw_size=7)
        else:
            good(port, cmd)

    rig = Rig(tmp_path, {"builder": garbage_once})
    assert rig.run().status == "completed"
    (perr,) = rig.events("system.protocol_error")
    assert perr["payload"] == {
        "role": "builder",
        "reason": "not JSON",
        "size": 7,
        "prefix": "garbage",
    }
    (failed,) = rig.events("system.command_failed")
    assert failed["payload"]["code"] == "protocol_error"


def test_an_answer_for_another_correlation_is_refused(tmp_path: Path) -> None:
    calls = {"n": 0}

    def misaddressed(port: FakePort, cmd: dict[str, Any]) -> None:
        calls["n"] += 1
        if calls["n"] == 1:
            port.emit("builder.completed", {**cmd, "correlation_id": "corr-other"})
        else:
            good(port, cmd)

    rig = Rig(tmp_path, {"builder": misaddressed})
    assert rig.run().status == "completed"
    (perr,) = rig.events("system.protocol_error")
    assert "correlation corr-other" in perr["payload"]["reason"]
    reason = rig.events("system.command_failed")[0]["payload"]["reason"]
    assert reason.startswith("protocol error: ") and "expected T-1 / corr-T-1-1" in reason


def test_error_events_retry_with_backoff_then_fail_after_max_attempts(tmp_path: Path) -> None:
    def errs(port: FakePort, cmd: dict[str, Any]) -> None:
        port.emit("error", cmd, payload={"code": "E42", "message": "no"})

    rig = Rig(tmp_path, {"builder": errs})
    outcome = rig.run()
    assert outcome.status == "failed"
    assert "after 3 attempts: E42: no" in outcome.reason
    cmds = rig.commands()
    assert [c["retry"]["attempt"] for c in cmds] == [0, 1, 2]
    assert len({c["idempotency_key"] for c in cmds}) == 1
    assert len(rig.inbox.slept) == 3  # a backoff after each error event
    assert rig.events("system.agent_restarted") == []  # an error event is no crash


def test_a_predecessor_s_last_words_are_ignored(tmp_path: Path) -> None:
    def late(port: FakePort, cmd: dict[str, Any]) -> None:
        if port.generation == 1 and len(port.sent) == 1:
            return  # silent: it times out and is replaced
        # The new agent's answer comes after a stale one from generation 1.
        stale = message("builder", "builder.completed", cmd, payload={"tests": {"status": "fail"}})
        port.inbox.post(Incoming("builder", 1, "event", message=stale))
        good(port, cmd)

    rig = Rig(tmp_path, {"builder": late})
    assert rig.run().status == "completed"
    builder_events = [r for r in rig.records() if r.get("from", {}).get("agent_type") == "builder"]
    assert len(builder_events) == 1  # only the live agent's answer was recorded


def test_an_agent_that_cannot_restart_counts_as_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path, {"reviewer": dies}, policy=dataclasses.replace(POLICY, max_attempts=9))
    rig.agents.fail_restart.add("reviewer")
    outcome = rig.run()
    assert outcome.status == "failed"
    assert "agent reviewer failed after 2 restarts" in outcome.reason
    failed = rig.events("system.command_failed")
    assert [f["payload"]["code"] for f in failed] == ["agent_exited"] + ["agent_start_failed"] * 2


def test_an_agent_that_closed_its_input_is_restarted(tmp_path: Path) -> None:
    calls = {"n": 0}
    rig = Rig(tmp_path)
    real_start = rig.agents.start

    def start(*args: Any) -> FakePort:
        port = real_start(*args)
        calls["n"] += 1
        port.accepts_input = port.role != "builder" or calls["n"] > 3  # first builder: gone
        return port

    rig.agents.start = start  # type: ignore[method-assign]
    assert rig.run().status == "completed"
    failed = rig.events("system.command_failed")
    assert failed and failed[0]["payload"]["reason"].startswith("agent builder closed its input")


@pytest.mark.parametrize("terminal", ["spec.updated", "spec.no_changes_needed"])
def test_every_agent_is_stopped_at_the_end(tmp_path: Path, terminal: str) -> None:
    def spec(port: FakePort, cmd: dict[str, Any]) -> None:
        port.emit(terminal, cmd)

    rig = Rig(tmp_path, {"spec_maintainer": spec})
    assert rig.run().status == "completed"
    assert rig.agents.started and not any(p.running for p in rig.agents.started)
    assert rig.engine.roster.ports == {}


# -- the ledger is the only input: replaying any prefix gives the live state ----

BEHAVIOURS = ("answer", "silent", "exit", "garbage", "error", "misaddressed", "bad_artifact")


def scripted(plan: dict[str, list[str]], verdicts: list[str]) -> dict[str, Script]:
    """Agents that misbehave as ``plan`` says, call after call, then answer well."""
    calls: dict[str, int] = {}

    def script(port: FakePort, cmd: dict[str, Any]) -> None:
        n = calls[port.role] = calls.get(port.role, 0) + 1
        todo = plan.get(port.role, [])
        what = todo[n - 1] if n <= len(todo) else "answer"
        if what == "silent":
            return
        if what == "exit":
            dies(port, cmd)
        elif what == "garbage":
            port.post("error", error=FramingError("not JSON", size=3, prefix=b"{{{"), raw_size=3)
        elif what == "error":
            port.emit("error", cmd, payload={"code": "E1", "message": "failed"})
        elif what == "misaddressed":
            port.emit("builder.progress", {**cmd, "correlation_id": "corr-elsewhere"})
        elif what == "bad_artifact":
            art = {"path": "missing.txt", "sha256": "sha256:" + "0" * 64, "size": 1}
            port.emit(terminal_of(port.role), cmd, artifacts=[art], **answer_fields(port.role))
        elif port.role == "reviewer" and verdicts:
            port.emit("review.completed", cmd, status=verdicts.pop(0))
        else:
            good(port, cmd)

    return {role: script for role in ("builder", "reviewer", "spec_maintainer")}


def terminal_of(role: str) -> str:
    return {"builder": "builder.completed", "reviewer": "review.completed"}.get(
        role, "spec.updated"
    )


def answer_fields(role: str) -> dict[str, Any]:
    if role == "builder":
        return {"payload": {"tests": {"status": "pass", "summary": ""}}}
    return {"status": "approved"} if role == "reviewer" else {}


@settings(max_examples=examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    plan=st.fixed_dictionaries(
        {
            role: st.lists(st.sampled_from(BEHAVIOURS), max_size=4)
            for role in ("builder", "reviewer", "spec_maintainer")
        }
    ),
    verdicts=st.lists(st.sampled_from(["approved", "changes_requested"]), max_size=3),
    exactly_once=st.sets(st.sampled_from(["builder", "reviewer"])),
)
def test_replaying_any_prefix_of_the_ledger_gives_the_live_state(
    plan: dict[str, list[str]], verdicts: list[str], exactly_once: set[str]
) -> None:
    policy = dataclasses.replace(POLICY, max_rounds=3, max_restarts=3)
    with tempfile.TemporaryDirectory() as tmp:
        rig = Rig(Path(tmp), scripted(plan, list(verdicts)), policy=policy)
        rig.agents.exactly_once = exactly_once  # checkpoints around their commands
        live: list[State] = []
        fold = rig.engine.recorder._fold

        def recording(record: dict[str, Any]) -> None:
            fold(record)
            live.append(copy.deepcopy(rig.engine.state))

        rig.engine.recorder._fold = recording  # type: ignore[method-assign]
        outcome = rig.run()
        records = rig.records()
    assert outcome.status in ("completed", "failed")
    assert len(records) == len(live)
    for k in range(1, len(records) + 1):
        assert replay(records[:k]) == live[k - 1], f"state after record {k} differs"


def test_counters_in_messages_match_the_recorded_policy(tmp_path: Path) -> None:
    from lorch.engine import transcript

    # Restarts run out before attempts: restart 1 of 1, then the run fails on restarts.
    policy = dataclasses.replace(POLICY, max_restarts=1, max_attempts=3, backoff_initial_s=0.0)
    rig = Rig(tmp_path, {"builder": dies}, policy=policy)
    outcome = rig.run()
    shown = [t for r in rig.records() if (t := transcript.render(r, color=False))]
    assert [t for t in shown if "builder" in t and "started" not in t] == [
        "[lorch→builder] implement (T-1, round 1)",
        "[lorch] builder exited (code -9)",
        "[lorch] attempt 1 of 3 failed: agent builder exited (code -9): boom",
        "[lorch] restarting builder in 0.00 s (restart 1 of 1): exited with code -9",
        "[lorch→builder] implement (T-1, round 1, attempt 2 of 3)",
        "[lorch] builder exited (code -9)",
        "[lorch] attempt 2 of 3 failed: agent builder exited (code -9): boom",
        "[lorch] FAILED: agent builder failed after 1 restart: exited with code -9",
    ]
    assert outcome.reason == "agent builder failed after 1 restart: exited with code -9"

    # Attempts run out first: no restart for an attempt that will not come.
    policy = dataclasses.replace(POLICY, max_restarts=5, max_attempts=2, backoff_initial_s=0.0)
    (tmp_path / "2").mkdir()
    rig = Rig(tmp_path / "2", {"builder": dies}, policy=policy)
    outcome = rig.run()
    restarts = rig.events("system.agent_restarted")
    assert [(r["payload"]["restarts"], r["payload"]["max_restarts"]) for r in restarts] == [(1, 5)]
    failed = rig.events("system.command_failed")
    assert [(f["payload"]["attempt"], f["payload"]["max_attempts"]) for f in failed] == [
        (0, 2),
        (1, 2),
    ]
    assert outcome.reason.startswith("agent builder failed implement for task T-1 after 2 attempts")


def test_a_command_over_the_message_limit_is_not_sent(tmp_path: Path) -> None:
    from lorch.wire.errors import ConfigError

    rig = Rig(tmp_path, policy=dataclasses.replace(POLICY, message_max_bytes=16_384))
    with pytest.raises(ConfigError) as e:
        rig.run({**TASK, "goal": "g" * 20_000})
    assert "$.policy.message_max_bytes: the implement command for task T-1 is " in str(e.value)
    assert rig.commands() == [] and all(not p.sent for p in rig.agents.started)


def _ready(port: FakePort) -> None:
    port.post("ready")


def _builder_got_nothing(rig: Rig) -> None:
    assert rig.commands() == []
    assert all(not p.sent for p in rig.agents.started)


def test_preflight_waits_for_every_role_before_the_first_command(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    order: list[str] = []

    def late_ready(port: FakePort) -> None:
        order.append(f"{port.role} started")
        port.post("heartbeat")  # read meanwhile, handed back to the engine
        port.post("ready")

    for role in ("builder", "reviewer", "spec_maintainer"):
        rig.agents.startup[role] = late_ready
    assert rig.run().status == "completed"
    assert order == ["builder started", "reviewer started", "spec_maintainer started"]
    recs = rig.records()
    first_cmd = next(i for i, r in enumerate(recs) if r["kind"] == "command")
    started = [
        r["payload"]["role"] for r in recs[:first_cmd] if r.get("event") == "system.agent_started"
    ]
    assert started == ["builder", "reviewer", "spec_maintainer"]


@pytest.mark.parametrize(
    ("startup", "says"),
    [
        (
            lambda p: p.post("exit"),
            "agent reviewer did not start: exited (code -9) before its first heartbeat",
        ),
        (
            lambda p: None,
            "agent reviewer did not start: its first heartbeat did not come within 5 s",
        ),
        (
            lambda p: p.post("error", error=FramingError("not JSON", size=3, prefix=b"hi!")),
            "agent reviewer did not start: printed a line that is not a protocol message: not JSON",
        ),
        (
            lambda p: p.post("exit", reason="ACP initialize failed: nope (code -32603)"),
            "agent reviewer did not start: ACP initialize failed: nope (code -32603)",
        ),
    ],
)
def test_a_role_that_fails_its_start_up_check_stops_the_run_first(
    tmp_path: Path, startup: Callable[[FakePort], None], says: str
) -> None:
    from lorch.wire.errors import AgentNotReady

    rig = Rig(tmp_path)
    rig.agents.startup = {"builder": _ready, "reviewer": startup, "spec_maintainer": _ready}
    with pytest.raises(AgentNotReady) as e:
        rig.run()
    assert str(e.value) == says
    _builder_got_nothing(rig)
    (exited,) = rig.events("system.agent_exited")
    assert exited["payload"]["role"] == "reviewer" and exited["payload"]["reason"] in says
    assert not replay(rig.records()).finished  # resumable


def test_preflight_checks_every_role_before_starting_any(tmp_path: Path) -> None:
    from lorch.wire.errors import ConfigError

    rig = Rig(tmp_path)
    rig.agents.bad_config["spec_maintainer"] = "lorch.json: $.agents.spec_maintainer.cmd: fixture x"
    with pytest.raises(ConfigError, match="spec_maintainer"):
        rig.run()
    assert rig.agents.started == [] and rig.commands() == []


def test_an_agent_that_cannot_start_at_all_stops_the_run_first(tmp_path: Path) -> None:
    from lorch.wire.errors import AgentNotReady

    rig = Rig(tmp_path)
    rig.agents.fail_start.add("reviewer")
    with pytest.raises(AgentNotReady, match=r"^agent reviewer: cannot start 'fake-reviewer'$"):
        rig.run()
    _builder_got_nothing(rig)


# -- checkpoints around the commands of roles lorch makes exactly-once ----------


def counting_takes(rig: Rig) -> list[str]:
    """Every tree the engine's own checkpoints take, in order."""
    ck = rig.engine.turns.checkpoints
    taken: list[str] = []
    take = ck.take

    def counted() -> str:
        taken.append(take())
        return taken[-1]

    ck.take = counted  # type: ignore[method-assign]
    return taken


def test_a_turn_end_checkpoint_is_recorded_once_and_reused_while_nothing_came_between(
    tmp_path: Path,
) -> None:
    from lorch.agents.transport import TurnCheckpoint
    from lorch.store.checkpoint import Checkpoints

    def builder(port: FakePort, cmd: dict[str, Any]) -> None:
        # Like the ACP transport: it checkpoints the turn's end itself.
        (rig.ws / "src").mkdir(exist_ok=True)
        (rig.ws / "src" / "a.py").write_text(f"# {cmd['action']}\n")
        own = Checkpoints(rig.ws, rig.ws / "state" / "checkpoints.git", durable=False)
        pre = port.sent[-1][2].checkpoint
        assert pre is not None
        tree = own.take()
        ended = TurnCheckpoint(tree, tuple(own.changed(pre, tree)))
        msg = message("builder", "builder.completed", cmd)
        msg["payload"] = {"tests": {"status": "pass", "summary": ""}}
        port.post("event", message=msg, checkpoint=ended)

    def reviewer(port: FakePort, cmd: dict[str, Any]) -> None:
        (rig.ws / "reviews").mkdir(exist_ok=True)
        (rig.ws / "reviews" / "T-1.json").write_text(cmd["message_id"])
        good(port, cmd)

    rig = Rig(tmp_path, {"builder": builder, "reviewer": reviewer})
    rig.agents.exactly_once = {"builder", "reviewer"}
    taken = counting_takes(rig)
    assert rig.run().status == "completed"
    recs = rig.records()
    ck = [r["payload"] for r in recs if r.get("event") == "system.checkpoint"]
    assert [(c["phase"], c["role"]) for c in ck] == [
        ("pre", "builder"),
        ("post", "builder"),
        ("pre", "reviewer"),
        ("post", "reviewer"),
    ]
    # The builder's post is the transport's, with its changed paths: not taken again.
    assert ck[1]["changed"] == ["src/a.py"]
    # Nothing came between the builder's post and the reviewer's command: same tree.
    i = next(i for i, r in enumerate(recs) if r.get("payload") is ck[1])
    assert recs[i + 1].get("payload") is ck[2]
    assert ck[2]["tree"] == ck[1]["tree"]
    # So the engine took two checkpoints (the first pre, the reviewer's post), not four.
    assert taken == [ck[0]["tree"], ck[3]["tree"]]
    assert ck[3]["changed"] == ["reviews/T-1.json"]


def test_a_command_of_another_role_between_two_checkpoints_means_a_new_one(
    tmp_path: Path,
) -> None:
    def builder(port: FakePort, cmd: dict[str, Any]) -> None:
        (rig.ws / "out.txt").write_text(cmd["action"])
        good(port, cmd)

    def reviewer(port: FakePort, cmd: dict[str, Any]) -> None:
        # Not checkpointed, and it changes the workspace.
        (rig.ws / "reviews").mkdir(exist_ok=True)
        (rig.ws / "reviews" / "T-1.json").write_text(cmd["message_id"])
        port.emit("review.completed", cmd, status=verdicts.pop(0))

    verdicts = ["changes_requested", "approved"]
    rig = Rig(tmp_path, {"builder": builder, "reviewer": reviewer})
    rig.agents.exactly_once = {"builder"}
    taken = counting_takes(rig)
    assert rig.run().status == "completed"
    ck = [r["payload"] for r in rig.records() if r.get("event") == "system.checkpoint"]
    assert [c["phase"] for c in ck] == ["pre", "post", "pre", "post"]
    # The reviewer's turn came between: implement_changes starts from a tree of its own,
    # with the review file in it.
    assert ck[2]["tree"] != ck[1]["tree"]
    assert len(taken) == 4
    store = rig.engine.turns.checkpoints
    assert store.changed(ck[1]["tree"], ck[2]["tree"]) == ["reviews/T-1.json"]


def test_a_checkpoint_another_process_recorded_is_taken_again(tmp_path: Path) -> None:
    from lorch.engine.turn_checkpoints import TurnCheckpoints

    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("1")
    cmd = {"idempotency_key": "ik:" + "1" * 64, "to": {"agent_type": "builder"}}
    first = TurnCheckpoints(ws, durable=False)
    _, tree = first.before_send(State(), cmd)
    state = State()
    post = {"role": "builder", "idempotency_key": cmd["idempotency_key"], "phase": "post"}
    system = {"kind": "event", "from": {"agent_type": "system"}, "event": "system.checkpoint"}
    state.fold({**system, "payload": {**post, "tree": tree}})
    assert state.tree_now == tree
    (ws / "a.txt").write_text("changed while lorch was not running")
    # A new process (a resume) cannot know what happened since: it checkpoints again.
    later = TurnCheckpoints(ws, durable=False)
    nxt = {**cmd, "idempotency_key": "ik:" + "2" * 64}
    _, again = later.before_send(state, nxt)
    assert again != tree
