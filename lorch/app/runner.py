"""``lorch run`` and ``lorch resume``: the thin shell around the engine.

Both take the workspace lock, open the ledger, and hand over to the same
:class:`~lorch.engine.loop.Engine` loop; ``resume`` first folds the recorded
ledger, cuts a torn last line, and ends the crashed run's agents
(DESIGN.md §5.3, §5.5, §5.6).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from lorch.agents.procs import kill_orphan
from lorch.app import drift
from lorch.app.config import Config, ensure, load, run_policy
from lorch.app.launch import ConfiguredAgents
from lorch.core.state import State
from lorch.core.workflow import replay
from lorch.engine import transcript
from lorch.engine.asking import ConsolePrompter, Prompter
from lorch.engine.loop import Engine, Outcome
from lorch.engine.turn_checkpoints import TurnCheckpoints
from lorch.store import derived_files as store
from lorch.store import layout, ledger
from lorch.store.atomic import ensure_dir
from lorch.store.faults import NO_FAULTS, Faults
from lorch.store.wslock import workspace_lock
from lorch.wire.errors import (
    AgentNotReady,
    ConfigError,
    Interrupted,
    LorchError,
    StorageError,
    UsageError,
)
from lorch.wire.protocol import Record
from lorch.wire.redact import Redactor, secret_values


@dataclass
class Console:
    """Where the live transcript goes (stdout by default); colour only on a TTY."""

    out: TextIO = field(default_factory=lambda: sys.stdout)
    color: bool | None = None
    verbose: bool = False

    def __post_init__(self) -> None:
        if self.color is None:
            self.color = self.out.isatty() and os.environ.get("NO_COLOR") is None
        self._lock = threading.Lock()

    def say(self, text: str) -> None:
        with self._lock:
            self.out.write(text + "\n")
            self.out.flush()

    def record(self, record: Record) -> None:
        text = transcript.render(record, color=bool(self.color))
        if text is not None:
            self.say(text)


def new_run_id() -> str:
    return f"run-{datetime.now(UTC):%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:8]}"


# -- entry points ---------------------------------------------------------------


def _task(config: Config, task_id: str | None) -> dict[str, Any] | None:
    """The task to run, or None: no task anywhere, so the run starts with intake.

    ``--task ID`` picks a task of ``task`` / ``tasks`` (its goal and fields go to
    the builder in ``inputs.task``); an id lorch.json does not list runs bare.
    """
    if task_id is None:
        if config.task is None:
            if not config.orchestration_enabled:
                raise ConfigError(
                    f"{config.path}: no task, and intake needs an orchestration agent: pass "
                    "--task ID, set $.task or $.tasks, or configure $.agents.orchestration "
                    "(enabled)"
                )
            return None
        return dict(config.task)
    found = config.find_task(task_id)
    if found is not None:
        return found
    from lorch.wire import schemas

    schemas.validate("config", {**config.raw, "task": {"id": task_id}}, source="--task")
    return {"id": task_id}


def configured_agents(
    workspace: Path, config: Config, console: Console
) -> tuple[ConfiguredAgents, Redactor]:
    """The agents ``config`` names, and the redactor for what lorch records of them."""
    redactor = Redactor(secret_values(dict(os.environ), *(a.env for a in config.agents.values())))
    agents = ConfiguredAgents(
        workspace,
        config,
        redactor,
        on_stderr=console.say if console.verbose else None,
        notice=console.say,
    )
    return agents, redactor


def new_engine(
    workspace: Path,
    log: ledger.Ledger,
    config: Config,
    console: Console,
    prompter: Prompter | None = None,
    agents: tuple[ConfiguredAgents, Redactor] | None = None,
    faults: Faults = NO_FAULTS,
) -> Engine:
    """An engine recording to ``log`` (opened) whose agents and limits come from ``config``."""
    configured, redactor = agents or configured_agents(workspace, config, console)
    turns = TurnCheckpoints(workspace, durable=config.policy.fsync)
    return Engine.build(
        workspace,
        log,
        configured,
        console,
        redactor,
        turns=turns,
        prompter=prompter or ConsolePrompter(out=console.out),
        faults=faults,
    )


def _ignore_sigint() -> None:
    """From here on the run is being put away: a further Ctrl-C must not cut that short."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _guard(runner: Engine, body: Callable[[], Outcome]) -> Outcome:
    try:
        return body()
    except KeyboardInterrupt:
        runner.roster.stop_event.set()
        try:
            runner.roster.stop_agents()
        except KeyboardInterrupt:
            # A second Ctrl-C: stop waiting for agents to wind down, kill them
            # (no agent is left behind), and still leave a resumable run.
            _ignore_sigint()
            for role in list(runner.roster.ports):
                with contextlib.suppress(LorchError, OSError):
                    runner.roster.kill_agent(role)
        _ignore_sigint()
        with contextlib.suppress(LorchError, OSError):
            runner.recorder.write_derived()
        raise Interrupted(
            f"interrupted; agents stopped. Resume with: lorch resume --workspace "
            f"{runner.workspace} --run {runner.state.run_id}"
        ) from None
    except AgentNotReady as e:
        # Before any agent got a command: nothing to undo, the run goes on once fixed.
        runner.roster.stop_agents()
        raise AgentNotReady(
            f"{e}. No agent got a command; once fixed: lorch resume --workspace "
            f"{runner.workspace} --run {runner.state.run_id} (with --accept-config-change "
            "if the fix is in lorch.json)"
        ) from None
    except StorageError as e:
        # A full or failing disk mid-run: the ledger holds everything up to the
        # failed write (a torn line at most, which resume cuts).
        runner.roster.stop_agents()
        if not runner.state.run_id:
            raise
        raise StorageError(
            f"{e}; the run is resumable: fix the disk, then lorch resume --workspace "
            f"{runner.workspace} --run {runner.state.run_id}"
        ) from None
    except BaseException:
        runner.roster.stop_agents()
        raise
    finally:
        with contextlib.suppress(LorchError, OSError):
            runner.recorder.flush_derived()
        runner.close()


def run(
    workspace: Path,
    task_id: str | None = None,
    *,
    console: Console | None = None,
    prompter: Prompter | None = None,
) -> Outcome:
    faults = Faults.from_env()  # tests' hooks: a bad LORCH_CRASH_AT is refused before any file
    console = console or Console()
    workspace = workspace.resolve()
    ensure_dir(workspace)
    with workspace_lock(workspace, console.say):
        config, created = ensure(workspace)
        if created:
            console.say(
                f"[lorch] no lorch.json here: created {config.path} wired to the built-in "
                "mock agents (scenario happy-path)"
            )
        task = _task(config, task_id)
        agents = configured_agents(workspace, config, console)
        for role in config.agents:
            # Before the run exists: a command not found, a broken fixture (exit 2).
            agents[0].check(role)
        run_id = new_run_id()
        log, _ = ledger.Ledger.open(
            layout.ledger(workspace, run_id), fsync=config.policy.fsync, faults=faults
        )
        runner = new_engine(workspace, log, config, console, prompter, agents, faults)

        def body() -> Outcome:
            runner.recorder.start_run(run_id, task, run_policy(config), drift.identity(config))
            runner.recorder.write_index()
            runner.recorder.take_snapshot()
            return runner.drive()

        return _guard(runner, body)


def find_unfinished(workspace: Path) -> str:
    candidates = layout.runs(workspace)  # newest first
    for path in candidates:
        if not replay(ledger.read(path, validate=False)).finished:
            return path.stem
    if candidates:
        # Nothing unfinished: the newest run, so resume reports it (and rebuilds
        # its derived files, in case a crash came after its last record).
        return candidates[0].stem
    known = [r.get("run_id") for r in store.read_index(workspace)["runs"]]
    if known:
        raise ledger_gone(workspace, str(known[-1]))
    raise UsageError(f"{workspace}: no runs in this workspace")


def ledger_gone(workspace: Path, run_id: str) -> LorchError:
    """The error for a run lorch knows of (its index, its receipts) whose ledger is gone."""
    rel = Path(layout.ledger_rel(run_id))
    kept = layout.ledger(workspace, run_id).with_name(f"{rel.name}.lorch")
    if kept.exists():
        hint = f"lorch kept a copy when it noticed: rename {kept.name} to {rel.name}"
    else:
        hint = "restore it from a backup; its receipts and transcript are left as they are"
    return ledger.LedgerGone(
        f"{workspace / rel}: the ledger of run {run_id} is gone (state/index.json names the "
        f"run); nothing of the run can be proven without it, so lorch will not resume it: {hint}"
    )


def resume(
    workspace: Path,
    run_id: str | None = None,
    *,
    console: Console | None = None,
    accept_config_change: bool = False,
    prompter: Prompter | None = None,
) -> Outcome:
    faults = Faults.from_env()  # tests' hooks: a bad LORCH_CRASH_AT is refused before any file
    console = console or Console()
    workspace = workspace.resolve()
    if not workspace.is_dir():
        raise UsageError(f"{workspace}: no such workspace")
    with workspace_lock(workspace, console.say):
        config = load(workspace)
        run_id = run_id or find_unfinished(workspace)
        path = layout.ledger(workspace, run_id)
        if not path.exists():
            if any(r.get("run_id") == run_id for r in store.read_index(workspace)["runs"]):
                raise ledger_gone(workspace, run_id)
            raise UsageError(f"{workspace}: no run {run_id} (no {path.relative_to(workspace)})")
        log, torn = open_recorded(path, config.policy.fsync, faults)
        runner = new_engine(workspace, log, config, console, prompter, faults=faults)
        resumed = _Resume(runner, config, path, run_id, torn, console, accept_config_change, faults)
        return _guard(runner, resumed.body)


def open_recorded(
    path: Path, fsync: bool, faults: Faults
) -> tuple[ledger.Ledger, ledger.TornTail | None]:
    """The ledger of the run to resume, opened for appends; the torn last line it cut."""
    if faults.planted_bug("no_torn_cut"):
        fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        found = ledger.scan(path)
        opened = ledger.Ledger(
            path, fd, found.records, fsync=fsync, chain=found.chain, faults=faults
        )
        return opened, None
    return ledger.Ledger.open(path, fsync=fsync, faults=faults)


@dataclass
class _Resume:
    runner: Engine
    config: Config
    path: Path
    run_id: str
    torn: ledger.TornTail | None
    console: Console
    accept_config_change: bool
    faults: Faults

    def body(self) -> Outcome:
        runner, state = self.runner, self.runner.state
        recorder, torn = runner.recorder, self.torn
        recorder.replay(self.path)
        planted = self.faults.planted_bug
        if planted("reask_on_resume") and state.queue is None:
            # A resume that does not trust the recorded instruction asks it again.
            state.intake.answered.pop("instruction", None)
            state.intake.instruction = None
        if not state.run_id:
            # The crash came before record 1 was durable: start the run afresh.
            # Its record 1 is folded like any other (the run id, the policy, and
            # whether it starts with intake all come from it).
            self.start_afresh()
        if torn is not None:
            self.console.say(
                f"[lorch] cut a torn last line ({torn.size} bytes) from {self.path.name}: "
                f"{torn.reason}"
            )
        if state.finished:
            # A crash right after the run's last record can leave its agents winding
            # down (an ACP agent takes a while to exit on EOF): end them all the same.
            if not planted("no_orphan_kill"):
                end_orphans(state)
            recorder.write_derived()
            self.console.say(
                f"[lorch] run {self.run_id} already {state.status}"
                + (f": {state.failure}" if state.failure else "")
            )
            return Outcome(self.run_id, state.status, state.failure or "")
        changes = self.config_changes()
        killed = [] if planted("no_orphan_kill") else end_orphans(state)
        if state.snapshot_id is None:
            recorder.take_snapshot()
        recorder.system(
            "system.resumed",
            {
                "torn_tail": None if torn is None else {"line": torn.line, "size": torn.size},
                "orphans_killed": killed,
                **changes,
            },
        )
        uncaptured = recorder.missing_capture()
        if uncaptured is not None:
            # The crash came between the answer and its capture: capture it now,
            # before its check (which still compares it with what the agent claimed).
            recorder.capture_verdict(uncaptured)
        recorder.write_index()
        return runner.drive()

    def start_afresh(self) -> None:
        config = self.config
        self.runner.recorder.start_run(
            self.run_id, _task(config, None), run_policy(config), drift.identity(config)
        )

    def config_changes(self) -> Record:
        """Refuse any change to lorch.json since the run recorded it, unless accepted."""
        state = self.runner.state
        found = drift.compare(state.config, state.policy, state.task, self.config)
        if not found.any:
            return {}
        keys = ", ".join(found.changed)
        if found.binding:
            keys += f" ({'; '.join(found.binding)})"
        if not self.accept_config_change:
            raise ConfigError(
                f"{self.config.path}: changed since run {self.run_id} recorded it: {keys}. "
                "Resume runs with the configuration the run started with: undo the change, "
                "or pass --accept-config-change to apply it from now on (it is recorded in "
                "the ledger)"
            )
        self.console.say(
            f"[lorch] lorch.json changed since the run recorded it: {keys}; applying it, "
            "as accepted"
        )
        return found.accepted(self.config)


def end_orphans(state: State) -> list[int]:
    """End the crashed run's agents (DESIGN.md §5.6); the pids that were still alive.

    Only processes lorch recorded starting (``system.agent_started`` is lorch's
    own record), and only while pid, group and start time all still match.
    """
    return [
        int(info["pid"])
        for _role, info in sorted(state.agents.items())
        if kill_orphan(int(info["pid"]), int(info["pgid"]), started=info.get("start_time"))
    ]


__all__ = ["Console", "Interrupted", "Outcome", "StorageError", "resume", "run"]
