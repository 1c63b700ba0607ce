"""The engine's agents: started on demand, checked, stopped — each start and exit recorded.

:class:`Roster` is the part of the engine between the record
(:class:`~lorch.engine.recorder.Recorder`, which it is given) and the loop
(:class:`~lorch.engine.loop.Engine`, which is given both): it starts a role's
agent through the agent interface (``lorch/agents/transport.py``), waits for
its start-up check, records ``system.agent_started`` / ``system.agent_exited``,
and stops or kills it. It
knows agents only through :class:`~lorch.agents.transport.Agents` and
:class:`~lorch.agents.transport.AgentPort`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from lorch.agents import procs
from lorch.agents.transport import AgentPort, Agents, Inbox, Unready, await_ready
from lorch.engine.recorder import Recorder
from lorch.engine.timing import START_GRACE_S, Watchdog
from lorch.store.faults import NO_FAULTS, Faults
from lorch.wire.errors import AgentError, AgentNotReady, LorchError
from lorch.wire.protocol import Record
from lorch.wire.vocabulary import ROLES


class Roster:
    """The agents of one run, by role; every limit is the recorded one (``state.policy``)."""

    def __init__(
        self,
        recorder: Recorder,
        agents: Agents,
        clock: Callable[[], float],
        inbox: Inbox | None = None,
        faults: Faults = NO_FAULTS,
    ) -> None:
        self.recorder = recorder
        # The groups a crash point kills (tests only): this roster is their only writer.
        self.groups = faults.agents
        self.agents = agents
        self.clock = clock
        self.ports: dict[str, AgentPort] = {}
        self.watchdogs: dict[str, Watchdog] = {}
        self.inbox = inbox or Inbox()
        self.generation = 0
        self.stop_event = threading.Event()

    # -- agents ---------------------------------------------------------------

    def agent(self, role: str) -> AgentPort:
        """``role``'s agent, started (and its start-up check passed) if need be.

        AgentError when it cannot start or fails the check (recorded as its exit).
        """
        port = self.ports.get(role)
        if port is not None and port.alive():
            return port
        if port is not None:
            self.kill_agent(role)
        port = self._start(role)
        unready = self._await_ready([port])
        if unready:
            raise AgentError(f"agent {role} did not start: {unready[0].reason}")
        return port

    def _start(self, role: str) -> AgentPort:
        self.generation += 1
        state, policy = self.recorder.state, self.recorder.policy
        port = self.agents.start(role, self.generation, state.run_id, state.snapshot_id, self.inbox)
        self.ports[role] = port
        interval = policy.heartbeat_interval(role) if port.sends_heartbeats else float("inf")
        self.watchdogs[role] = Watchdog(
            self.clock, interval, policy.heartbeat_misses, start_grace=START_GRACE_S
        )
        self.groups.started(role, port.pgid)
        started: Record = {
            "role": role,
            "pid": port.pid,
            "pgid": port.pgid,
            "argv": [self.recorder.redactor.text(a) for a in port.argv],
        }
        if port.start_time is not None:
            # With pid and pgid, names this process for good: resume ends only it.
            started["start_time"] = port.start_time
        self.recorder.system("system.agent_started", started)
        return port

    def _forget(self, role: str) -> AgentPort | None:
        port = self.ports.pop(role, None)
        self.watchdogs.pop(role, None)
        if port is not None:
            self.groups.forgot(role, port.pgid)
        return port

    def stop_agents(self) -> None:
        ports = list(self.ports.values())
        for port in ports:
            port.close_input()  # all at once: they wind down in parallel
        failed: LorchError | None = None
        for port in ports:
            # Forgotten only once stopped (or failed to log): a Ctrl-C in the
            # middle leaves it in ``ports``, for the caller to kill.
            try:
                port.stop()
            except LorchError as e:  # its log could not be written: stop the others first
                failed = failed or e
            self._forget(port.role)
        procs.end_strays()  # what they left behind out of their groups (setsid)
        if failed is not None:
            raise failed

    def preflight(self) -> None:
        """Start every configured role and check each before any gets a command.

        All start at once and are waited for together (the slowest sets the
        pace): each must pass its transport's start-up check (``await_ready``:
        NDJSON its first heartbeat, ACP its ``initialize`` answer). A role that
        cannot start stops the run here, before any agent works, with one line
        naming it; the run stays resumable (docs/decisions.md D38).
        """
        configured = self.agents.roles()
        # The orchestration agent is needed only until intake has decided (a run
        # with a task, or one resumed after the decision, never asks it again).
        state = self.recorder.state
        intake = state.intake.active and state.queue is None
        roles = [r for r in ROLES if r in configured and (r != "orchestration" or intake)]
        for role in roles:
            self.agents.check(role)  # a ConfigError naming the role and field
        ports: list[AgentPort] = []
        failed: list[str] = []
        for role in roles:
            port = self.ports.get(role)
            if port is not None and port.alive():
                continue
            try:
                ports.append(self._start(role))
            except AgentError as e:
                failed.append(str(e))
        failed += [f"agent {u.role} did not start: {u.reason}" for u in self._await_ready(ports)]
        if failed:
            raise AgentNotReady("; ".join(failed))

    def _await_ready(self, ports: list[AgentPort]) -> list[Unready]:
        """Wait until ``ports`` pass their start-up check; the failures, recorded as exits."""
        unready, kept = await_ready(self.inbox, ports, self.clock)
        self.inbox.requeue(kept)  # heartbeats, a ready agent's words: the engine's to act on
        for u in unready:
            port = self._forget(u.role)
            self.recorder.system(
                "system.agent_exited",
                {
                    "role": u.role,
                    "pid": port.pid if port is not None else -1,
                    "returncode": u.returncode if u.returncode is not None else -1,
                    "reason": u.reason,
                },
            )
        return unready

    def kill_agent(self, role: str) -> int | None:
        port = self._forget(role)
        rc = port.kill() if port is not None else None
        procs.end_strays()  # what it left behind out of its group (setsid)
        return rc

    def wait_readable(self, fd: int) -> None:
        """While a prompt waits for the user: agents' output is still read."""
        self.inbox.wait_readable(fd)

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            self.inbox.wait(seconds, self.stop_event)  # agents' output is still read

    def close(self) -> None:
        self.inbox.close()
