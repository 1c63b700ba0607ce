"""The engine: ask the reducer, send, wait, fold — one loop for ``run`` and ``resume``.

Write-ahead everywhere (DESIGN.md §5.1): a command is appended and fsynced
before its first byte reaches the agent; an agent's event is appended before
lorch acts on it, and fsynced before anything outside lorch's memory depends
on it (docs/decisions.md D16). What to do next is only ever the workflow
reducer's answer (``lorch/core/workflow.py``) to the folded ledger. Agents are
reached through the agent interface (``lorch/agents/transport.py``) — started, checked
and stopped by the layer below, ``lorch/engine/roster.py`` — and heard from through one
inbox; derived files go to ``lorch/engine/derived.py``.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from lorch.agents.known_agents import silence_hint
from lorch.agents.transport import AgentPort, Agents, Inbox, Incoming, SendContext, TurnCheckpoint
from lorch.core.build_loop import answer_problem
from lorch.core.policy import RunPolicy
from lorch.core.state import Pending, State
from lorch.core.steps import Check, Finish, Send
from lorch.core.workflow import after_failure, next_step
from lorch.engine import intake_steps, provenance
from lorch.engine.asking import ConsolePrompter, Prompter
from lorch.engine.derived import RECEIPT_DELAY_S
from lorch.engine.recorder import Recorder, Sink
from lorch.engine.roster import Roster
from lorch.engine.timing import Backoff, Watchdog
from lorch.engine.turn_checkpoints import TurnCheckpoints
from lorch.store.faults import NO_FAULTS, Faults
from lorch.store.ledger import Ledger
from lorch.store.paths import artifact_problems, missing_outputs
from lorch.wire import protocol, vocabulary
from lorch.wire.errors import AgentError, AuthRequired, ConfigError, LineTooLong
from lorch.wire.protocol import Record
from lorch.wire.redact import Redactor
from lorch.wire.textsafe import visible_line
from lorch.wire.vocabulary import ROLE_OF

# Characters of an agent's last message a timeout's line quotes.
SAID_LIMIT = 200
# How long an agent's event may wait for the next one to share its fsync
# (group commit); a terminal event is made durable with the command that follows.
GROUP_COMMIT_S = 0.01


@dataclass
class Outcome:
    """How a run ended (or stands, if it was already finished)."""

    run_id: str
    status: str
    reason: str = ""


def _deadline(seconds: float) -> str:
    return (datetime.now(UTC) + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Engine:
    """Drives one run. Every limit it applies is the recorded one (``state.policy``).

    It is given the run's :class:`Recorder` (which holds the opened ledger) and
    its :class:`Roster` (the agents); :meth:`build` makes both for a ledger.
    """

    def __init__(
        self,
        recorder: Recorder,
        roster: Roster,
        *,
        rng: random.Random | None = None,
        turns: TurnCheckpoints | None = None,
        prompter: Prompter | None = None,
        faults: Faults = NO_FAULTS,
    ) -> None:
        self.recorder = recorder
        self.roster = roster
        self.workspace = recorder.workspace
        self.agents = roster.agents
        self.clock = roster.clock
        # Who answers intake's questions (docs/intake.md): flags, then stdin.
        self.prompter: Prompter = prompter or ConsolePrompter()
        self.rng = rng or random.Random()
        # Planted bugs (tests only; none in production).
        self.faults = faults
        # Checkpoints around the commands of roles lorch makes exactly-once.
        self.turns = turns or TurnCheckpoints(recorder.workspace)
        # The checkpoint the transport took as the attempt in flight ended, if it did.
        self._turn_end: TurnCheckpoint | None = None
        # The last ``log`` message of the attempt in flight (redacted): what a
        # timeout's line quotes.
        self._said = ""

    @classmethod
    def build(
        cls,
        workspace: Path,
        log: Ledger,
        agents: Agents,
        console: Sink,
        redactor: Redactor,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        inbox: Inbox | None = None,
        turns: TurnCheckpoints | None = None,
        prompter: Prompter | None = None,
        faults: Faults = NO_FAULTS,
    ) -> Engine:
        """An engine for ``workspace``: its records go to ``log`` (opened), its agents are these."""
        recorder = Recorder(workspace, log, console, redactor, clock)
        roster = Roster(recorder, agents, clock, inbox, faults)
        return cls(recorder, roster, rng=rng, turns=turns, prompter=prompter, faults=faults)

    @property
    def state(self) -> State:
        return self.recorder.state

    @property
    def policy(self) -> RunPolicy:
        """The run's limits, as its ledger records them."""
        return self.recorder.policy

    def system(
        self, name: str, payload: Record, correlation_id: str | None = None, *, sync: bool = True
    ) -> None:
        self.recorder.system(name, payload, correlation_id, sync=sync)

    def close(self) -> None:
        self.turns.close()
        self.roster.close()
        self.recorder.close()

    def backoff(self, n: int) -> float:
        """The delay before retry ``n`` (0-based), under the run's recorded policy."""
        p = self.policy
        return Backoff(p.backoff_initial_s, p.backoff_factor, p.backoff_max_s, self.rng).delay(n)

    # -- the loop ---------------------------------------------------------------

    def drive(self) -> Outcome:
        started = False
        while True:
            step = next_step(self.state, fresh=self._fresh)
            if isinstance(step, Finish):
                return self.finish(step)
            if isinstance(step, Check):
                # Before any agent is started: a record between an answer and its
                # verdict would accept it unchecked (docs/decisions.md D26).
                self.check(step.pending)
                continue
            if isinstance(step, Send):
                if not started:
                    self.roster.preflight()
                    started = True
                self.send(step)
                continue
            intake_steps.perform(self.recorder, step, self.prompter, self.roster.wait_readable)

    def finish(self, step: Finish) -> Outcome:
        # Every receipt is on disk before the run's end is recorded.
        self.recorder.flush_derived()
        if not self.state.finished:
            if step.status == "completed":
                self.system("system.run_completed", {"reason": ""})
            elif step.status == "aborted":
                self.system("system.run_aborted", {"reason": step.reason})
            else:
                self.system("system.run_failed", {"reason": step.reason})
        self.roster.stop_agents()
        self.recorder.write_derived()
        return Outcome(self.state.run_id, self.state.status, self.state.failure or "")

    def _fresh(self, action: str) -> tuple[str, str]:
        """A new command's message id and deadline (its action's timeout from now)."""
        role = ROLE_OF.get(action, "")
        return protocol.new_message_id("cmd"), _deadline(self.policy.timeout(role, action))

    def check(self, pending: Pending) -> None:
        if self.agents.checkpointed(pending.role):
            taken, self._turn_end = self._turn_end, None
            for name, payload in self.turns.after_turn(pending, taken):
                self.system(name, payload, pending.command["correlation_id"])
        problems = artifact_problems(
            self.workspace, pending.terminal or {}, self.policy.artifact_max_bytes
        )
        code = "artifact_mismatch"
        if not problems and (pending.terminal or {}).get("event") == "builder.completed":
            problems, code = missing_outputs(self.workspace, pending.command), "missing_output"
        if not problems:
            self.state.accept()
            self.recorder.accepted()
            return
        corr = pending.command["correlation_id"]
        for path, reason in problems:
            self.system("system.artifact_rejected", {"path": path, "reason": reason}, corr)
        self.system(
            "system.command_failed",
            {
                "idempotency_key": pending.ik,
                "attempt": pending.attempt,
                "max_attempts": self.policy.max_attempts,
                "reason": f"artifact {problems[0][0]!r} rejected: {problems[0][1]}",
                "code": code,
            },
            corr,
        )

    def send(self, step: Send) -> None:
        cmd = step.command
        if step.resend and self.faults.planted_bug("new_key_on_resend"):
            cmd = {**cmd, "idempotency_key": "ik:" + os.urandom(32).hex()}
        role = cmd["to"]["agent_type"]
        try:
            port = self.roster.agent(role)
        except AgentError as e:
            self.fail_attempt(cmd, str(e), "agent_start_failed", role=role, kill=False)
            self.restart(role, str(e))
            return
        tree = None
        if self.agents.checkpointed(role):
            # Write-ahead like the command itself: the checkpoint (or the rollback
            # to it) is durable with the command, before its first byte goes out.
            records, tree = self.turns.before_send(self.state, cmd)
            for name, payload in records:
                self.system(name, payload, cmd["correlation_id"], sync=False)
        line = self.encode_command(cmd)  # the same bytes go to the ledger and to the agent
        self._turn_end = None
        self._said = ""
        self.recorder.append(
            cmd, sync=not self.faults.planted_bug("skip_command_fsync"), show=False, line=line
        )
        with self.roster.groups.working(role):
            # Durable now: send it first, then do what can wait while the agent works.
            sent = port.send(cmd, line, SendContext(checkpoint=tree))
            self.recorder.show_if_durable()
            if not sent:
                self.on_agent_gone(cmd, port)
                return
            self.recorder.derived.write_state(self.state, force=False)
            self.recorder.derived.release()
            self.wait_for_answer(cmd, port)

    def encode_command(self, cmd: Record) -> bytes:
        limit = self.policy.message_max_bytes
        try:
            return protocol.encode(cmd, limit)
        except LineTooLong as e:
            raise ConfigError(
                f"lorch.json: $.policy.message_max_bytes: the {cmd['action']} command for task "
                f"{cmd['task_id']} is {e.size} bytes, over the run's limit of {limit}: "
                "raise the limit or shorten the task"
            ) from None

    def wait_for_answer(self, cmd: Record, port: AgentPort) -> None:
        role = port.role
        timeout = self.policy.timeout(role, cmd["action"])
        watchdog = self.roster.watchdogs[role]
        watchdog.reset()
        watchdog.arm(timeout)
        derived = self.recorder.derived
        release_at = self.clock() + RECEIPT_DELAY_S if derived.held else None
        try:
            while True:
                wait = min(watchdog.next_check_in(), 0.5)
                if release_at is not None:
                    if self.clock() >= release_at:
                        derived.release(force=True)
                        release_at = None
                    else:
                        wait = min(wait, max(release_at - self.clock(), 0.0))
                if self.recorder.events_waiting:
                    wait = min(wait, GROUP_COMMIT_S)
                item = self.roster.inbox.get(timeout=max(wait, 0.001))
                if item is None and self.recorder.events_waiting:
                    self.recorder.sync()  # a quiet moment: make the events durable, show them
                if item is not None and self.handle(item, cmd, port):
                    return
                if self._watchdog_fired(cmd, role, watchdog, timeout):
                    return
        finally:
            watchdog.disarm()

    def _watchdog_fired(self, cmd: Record, role: str, watchdog: Watchdog, timeout: float) -> bool:
        if watchdog.timed_out():
            self.fail_attempt(cmd, self._timed_out(cmd, role, timeout), "timeout")
            self.restart(role, "timeout")
            return True
        if watchdog.unhealthy():
            misses = self.policy.heartbeat_misses
            reason = (
                f"no heartbeat from {role} for {misses} intervals of {watchdog.interval:g} s"
                if watchdog.started
                else f"no first heartbeat from {role} within {watchdog.allowance:g} s of its start"
            )
            self.fail_attempt(cmd, reason, "heartbeat_timeout")
            self.restart(role, reason)
            return True
        return False

    def _timed_out(self, cmd: Record, role: str, timeout: float) -> str:
        """The timeout's line: the role, and the last thing its agent said (message, stderr)."""
        line = f"{cmd['action']} timed out after {timeout:g} s"
        port = self.roster.ports.get(role)
        said = [f'{role} last said "{self._said}"'] if self._said else []
        if port is not None and port.last_stderr:
            said.append(f"{role}'s last stderr line: {port.last_stderr}")
        if said or port is None:
            return "; ".join([line, *said])
        return f"{line}; {role} said nothing" + silence_hint(port.argv, role)

    def handle(self, item: Incoming, cmd: Record, port: AgentPort) -> bool:
        """Act on one item from an agent; True when the command's attempt is over."""
        current = self.roster.ports.get(item.role)
        if current is None or current.generation != item.generation:
            return False  # a predecessor's last words
        if item.kind == "heartbeat":
            self.roster.watchdogs[item.role].beat()
            return False
        if item.kind == "ready":
            return False  # its start-up check, already passed (await_ready)
        working = item.role == port.role
        if item.kind == "permission":
            if working and item.message is not None:
                self._permission(item.message.get("payload") or {}, cmd)
            return False
        if item.message is None or not working:
            self.recorder.sync()  # what follows kills or records: the past must be durable first
        if item.kind == "exit":
            return self._on_exit(item, cmd, current, working)
        if item.error is not None:
            window = getattr(item.error, "window", b"") or getattr(item.error, "prefix", b"")
            error = protocol.ProtocolError(str(item.error), item.raw_size, window)
            return self._protocol_error(item, cmd, working, error, "protocol error")
        msg = item.message
        assert msg is not None
        # Attributed by channel, not by claim (DESIGN.md §5.11).
        refused = provenance.refusal(item.role, msg, cmd if working else None)
        if refused is None and working:
            refused = answer_problem(msg)  # an answer the reducer cannot act on
        if refused is not None:
            line = protocol.encode(msg)
            error = protocol.ProtocolError(refused, item.raw_size, protocol.window_of(line))
            return self._protocol_error(item, cmd, working, error, "protocol error")
        if working and msg.get("event") in vocabulary.TERMINAL_EVENTS:
            self._turn_end = item.checkpoint
        if working and msg.get("event") == "log":
            said = (msg.get("payload") or {}).get("message")
            if isinstance(said, str) and said.strip():
                self._said = visible_line(self.recorder.redactor.text(said.strip()))[:SAID_LIMIT]
        return self._on_event(msg)

    def _permission(self, decision: Record, cmd: Record) -> None:
        """A permission decision of the transport's, for the command in flight.

        Appended like the agent's events (group commit, not fsynced before the
        agent has its answer): it is a function of the recorded policy and the
        request, and it is durable before the turn's terminal event is, so a
        resume never keeps the effects of a decision the ledger lacks
        (docs/decisions.md D38).
        """
        payload = {
            **decision,
            "role": cmd["to"]["agent_type"],
            "idempotency_key": cmd["idempotency_key"],
            "attempt": cmd["retry"]["attempt"],
        }
        self.system("system.permission", payload, cmd["correlation_id"], sync=False)
        self.recorder.events_appended()

    def _on_exit(self, item: Incoming, cmd: Record, port: AgentPort, working: bool) -> bool:
        rc = self.roster.kill_agent(item.role)
        self.system(
            "system.agent_exited",
            {"role": item.role, "pid": port.pid, "returncode": rc if rc is not None else -1},
        )
        if not working:
            return False
        stderr = f": {port.last_stderr}" if port.last_stderr else ""
        self.fail_attempt(
            cmd, f"agent {item.role} exited (code {rc}){stderr}", "agent_exited", kill=False
        )
        self.restart(item.role, f"exited with code {rc}")
        return True

    def _protocol_error(
        self,
        item: Incoming,
        cmd: Record,
        working: bool,
        error: protocol.ProtocolError,
        failure: str,
    ) -> bool:
        payload = error.payload(item.role, self.recorder.redactor)
        self.system("system.protocol_error", payload, cmd["correlation_id"] if working else None)
        if not working:
            return False
        self.fail_attempt(cmd, f"{failure}: {payload['reason']}", "protocol_error")
        self.restart(item.role, failure)
        return True

    def _on_event(self, msg: Record) -> bool:
        name = msg.get("event")
        terminal = name in vocabulary.TERMINAL_EVENTS
        p = self.state.pending
        receipts, snap = self.recorder.derived.receipts, self.state.snapshot_id
        if (
            terminal
            and name != "error"
            and self.faults.planted_bug("receipt_before_ledger")
            and p is not None
            and snap
            and receipts is not None
        ):
            receipts.write(Pending(p.command, msg, [*p.event_ids, msg["message_id"]]), snap)
        self.recorder.append(msg, trusted=True, sync=False)
        self.recorder.events_appended()
        if name == "error":
            self.recorder.sync()
            payload = msg.get("payload") or {}
            if payload.get("code") == "auth_required":
                # No retry can help: stop with the agent's one line; the ledger keeps the
                # failed attempt, so a resume once the credentials are set goes on.
                raise AuthRequired(str(payload.get("message") or "the agent needs authentication"))
            p = self.state.pending
            self.roster.sleep(self.backoff(p.attempt if p else 0))
            return True
        return terminal

    def fail_attempt(
        self, cmd: Record, reason: str, code: str, *, role: str | None = None, kill: bool = True
    ) -> None:
        self.system(
            "system.command_failed",
            {
                "idempotency_key": cmd["idempotency_key"],
                "attempt": cmd["retry"]["attempt"],
                "max_attempts": self.policy.max_attempts,
                "reason": reason,
                "code": code,
            },
            cmd["correlation_id"],
        )
        if kill:
            self.roster.kill_agent(role or cmd["to"]["agent_type"])

    def on_agent_gone(self, cmd: Record, port: AgentPort) -> None:
        rc = self.roster.kill_agent(port.role)
        self.fail_attempt(
            cmd, f"agent {port.role} closed its input (code {rc})", "agent_exited", kill=False
        )
        self.restart(port.role, "stdin closed")

    def restart(self, role: str, reason: str) -> None:
        decision = after_failure(self.state, role, reason)
        if isinstance(decision, Finish):
            self.system("system.run_failed", {"reason": decision.reason})
            return
        delay = self.backoff(decision.n - 1)
        self.system(
            "system.agent_restarted",
            {
                "role": role,
                "restarts": decision.n,
                "max_restarts": self.policy.max_restarts,
                "delay_s": round(delay, 3),
                "reason": reason,
            },
        )
        self.roster.sleep(delay)
