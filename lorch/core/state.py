"""The state of a run, folded from its ledger records (DESIGN.md §5.3).

``State.fold(record)`` folds one ledger record into a small state: counters,
the pending command (:class:`Pending`) and the last accepted answer, not the
history. :mod:`lorch.core.workflow` asks it what to do next.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from lorch.core import intake as intake_stage
from lorch.core.commands import error_cause
from lorch.core.intake import Intake
from lorch.core.policy import RunPolicy, from_record
from lorch.wire.protocol import Record
from lorch.wire.vocabulary import ROLE_OF, TERMINAL_EVENTS


@dataclass
class Pending:
    """The command in flight: its last record, and what came back for it."""

    command: Record
    terminal: Record | None = None
    event_ids: list[str] = field(default_factory=list)
    failed: str | None = None  # reason of the failure of the current attempt
    failed_code: str | None = None
    retriable: bool = True  # an error event may say that trying again is pointless
    # Workspace checkpoints (git tree ids) of a role lorch makes exactly-once:
    # before the command's first attempt, and after its accepted answer.
    pre: str | None = None
    post: str | None = None
    # The verdict file as lorch captured it when the answer came (system.verdict).
    verdict: Record | None = None

    @property
    def ik(self) -> str:
        return str(self.command["idempotency_key"])

    @property
    def attempt(self) -> int:
        return int(self.command["retry"]["attempt"])

    @property
    def role(self) -> str:
        return str(self.command["to"]["agent_type"])


# Records that turn down the answer in flight; anything else after it accepts it.
REJECTIONS = ("system.artifact_rejected", "system.command_failed")
# Answers that come with a verdict file, captured at the end of their turn.
VERDICT_EVENTS = frozenset(
    {"review.completed", "spec.updated", "spec.no_changes_needed", "spec.changes_requested"}
)
# The records that end a run.
ENDS = frozenset({"system.run_completed", "system.run_failed", "system.run_aborted"})


@dataclass
class State:
    run_id: str = ""
    task: dict[str, Any] = field(default_factory=dict)
    policy: RunPolicy = field(default_factory=RunPolicy)
    snapshot_id: str | None = None
    started_at: str = ""
    updated_at: str = ""
    status: str = "running"
    failure: str | None = None
    records: int = 0
    commands: int = 0  # distinct keys sent
    rounds: dict[str, int] = field(default_factory=dict)  # commands per action
    accepted: int = 0  # commands whose answers were accepted (a count: memory stays flat)
    pending: Pending | None = None
    last_accepted: Pending | None = None  # the last command whose answer was accepted
    restarts: dict[str, int] = field(default_factory=dict)
    agents: dict[str, dict[str, int]] = field(default_factory=dict)
    # The last pre-command checkpoint recorded, and the key it was taken for.
    checkpoint: tuple[str, str] | None = None
    intake: Intake = field(default_factory=Intake)
    queue: list[dict[str, Any]] | None = None  # the tasks of a multi-task run, in order
    task_index: int = -1  # which of them is running (system.task_started)
    tasks_done: int = 0
    # The tree of the checkpoint that is the last record folded (None once any
    # record follows it): nothing lorch knows of has changed the workspace since.
    tree_now: str | None = None
    # What the ledger last recorded of lorch.json (``config_digest``, ``config_parts``):
    # record 1's, or an accepted change's (lorch/app/drift.py).
    config: dict[str, Any] = field(default_factory=dict)
    # Each verdict file's last capture (path → system.verdict payload); one per
    # path, so the state stays small.
    verdicts: dict[str, Record] = field(default_factory=dict)

    @property
    def task_id(self) -> str:
        return str(self.task.get("id", ""))

    @property
    def finished(self) -> bool:
        return self.status != "running"

    @property
    def last_answer(self) -> Record | None:
        """The last accepted terminal event of the current task."""
        p = self.last_accepted
        return p.terminal if p is not None and self._current(p) else None

    @property
    def last_action(self) -> str | None:
        """The action the last accepted answer of the current task answered."""
        p = self.last_accepted
        return str(p.command["action"]) if p is not None and self._current(p) else None

    def _current(self, p: Pending | None) -> bool:
        # Each task of a multi-task run starts its build loop afresh: an answer
        # for the task before (or for intake) is not this task's.
        return p is not None and p.command.get("task_id") == self.task_id

    # -- folding ---------------------------------------------------------------

    def fold(self, record: Record) -> None:
        """Fold one ledger record. Total: a malformed record changes nothing it
        cannot type-check (a forged or damaged ``system.*`` payload included)."""
        self.records += 1
        self.tree_now = None
        if not _awaits_verdict(record, self.pending):
            self._settle()
        if record.get("kind") == "command":
            self._fold_command(record)
            return
        name = _text(record.get("event"))
        ts = record.get("occurred_at")
        if isinstance(ts, str):
            self.updated_at = ts
        sender = record.get("from")
        if isinstance(sender, dict) and sender.get("agent_type") == "system":
            self._fold_system(name, record)
            return
        p = self.pending
        if p is None or record.get("correlation_id") != p.command["correlation_id"]:
            return
        p.event_ids.append(_text(record.get("message_id")))
        if name == "error":
            payload = _object(record.get("payload"))
            p.failed = error_cause(payload)
            p.failed_code = _text(payload.get("code") or "error")
            p.retriable = payload.get("retriable") is not False
            p.terminal = None
        elif name in TERMINAL_EVENTS and p.failed is None:
            p.terminal = record

    def _fold_command(self, record: Record) -> None:
        if not _well_formed_command(record):
            return  # not one lorch wrote: nothing to fold (verify reports the ledger)
        ik = record["idempotency_key"]
        if self.pending is None or self.pending.ik != ik:
            self.commands += 1
            action = record["action"]
            self.rounds[action] = self.rounds.get(action, 0) + 1
        self.pending = Pending(command=record, pre=self.pre_checkpoint(ik))

    def _fold_system(self, name: str, record: Record) -> None:
        fold = _SYSTEM_FOLDS.get(name)
        if fold is not None:
            fold(self, _object(record.get("payload")), record)

    def _run_started(self, payload: Record, record: Record) -> None:
        if self.run_id:
            return  # record 1 starts the run; another one changes nothing
        self.run_id = _text(payload.get("run_id"))
        task = _object(payload.get("task"))
        self.task = dict(task) if isinstance(task.get("id"), str) else {}
        self.policy = from_record(_object(payload.get("policy")), RunPolicy())
        self.started_at = _text(record.get("occurred_at"))
        self.intake.active = payload.get("intake") is True
        self._config(payload)

    def _config(self, payload: Record) -> None:
        found: dict[str, Any] = {
            k: payload[k] for k in ("config_digest", "config_parts") if k in payload
        }
        if found:
            self.config = found

    def _user_decision(self, payload: Record, record: Record) -> None:
        self._settle()  # a question is asked only about an accepted answer
        self.intake.fold_decision(_text(record.get("status")), payload)
        if self.intake.tasks is not None and self.queue is None:
            self.queue = list(self.intake.tasks)

    def _task_started(self, payload: Record, record: Record) -> None:
        task = _object(payload.get("task"))
        index = payload.get("index")
        if not isinstance(task.get("id"), str) or not isinstance(index, int):
            return
        self._settle()
        if self.task_index >= 0:
            self.tasks_done += 1
        # The build loop starts afresh for each task; counters stay per task.
        self.task = dict(task)
        self.task_index = index
        self.rounds = {}

    def _resumed(self, payload: Record, record: Record) -> None:
        # A resume that accepted a changed lorch.json records what now applies.
        self._config(payload)
        if isinstance(payload.get("policy"), dict):
            self.policy = from_record(payload["policy"], self.policy)
        changed = _object(payload.get("task"))
        if isinstance(changed.get("id"), str):
            self.task = dict(changed)

    def _snapshot(self, payload: Record, record: Record) -> None:
        if self.snapshot_id is not None:
            return  # the run's snapshot is taken once
        snap = payload.get("snapshot_id")
        self.snapshot_id = snap if isinstance(snap, str) and snap else None

    def _agent_started(self, payload: Record, record: Record) -> None:
        role, pid, pgid = payload.get("role"), payload.get("pid"), payload.get("pgid")
        if isinstance(role, str) and _positive_int(pid) and _positive_int(pgid):
            entry = {"pid": pid, "pgid": pgid}
            start = payload.get("start_time")
            if _positive_int(start):
                entry["start_time"] = start  # clock ticks since boot, from /proc
            self.agents[role] = entry

    def _agent_restarted(self, payload: Record, record: Record) -> None:
        role = _text(payload.get("role"))
        self.restarts[role] = self.restarts.get(role, 0) + 1

    def _checkpoint(self, payload: Record, record: Record) -> None:
        ik, tree = str(payload.get("idempotency_key")), str(payload.get("tree"))
        p = self.pending
        self.tree_now = tree
        if payload.get("phase") == "pre":
            self.checkpoint = (ik, tree)
            if p is not None and p.ik == ik:
                p.pre = tree
        elif p is not None and p.ik == ik:
            p.post = tree

    def _verdict(self, payload: Record, record: Record) -> None:
        path = payload.get("path")
        if not isinstance(path, str):
            return
        self.verdicts[path] = payload
        p = self.pending
        if p is not None and payload.get("idempotency_key") == p.ik and p.terminal is not None:
            p.verdict = payload

    def _verdict_changed(self, payload: Record, record: Record) -> None:
        # Reported once: the change is what the file is compared with from now on.
        path, now = payload.get("path"), payload.get("now")
        if isinstance(path, str) and path in self.verdicts:
            self.verdicts[path] = {**self.verdicts[path], "sha256": now, "reported": True}
            self.verdicts[path].pop("missing", None)

    def _command_failed(self, payload: Record, record: Record) -> None:
        p = self.pending
        if p is not None and payload.get("idempotency_key") == p.ik:
            p.failed = _text(payload.get("reason", "failed"))
            p.failed_code = _text(payload.get("code", "failed"))
            p.terminal = None

    def _run_completed(self, payload: Record, record: Record) -> None:
        if self.task_index >= 0:
            self.tasks_done = self.task_index + 1
        self.status = "completed"

    def _run_ended(self, status: str, payload: Record) -> None:
        self.status = status
        self.failure = _text(payload.get("reason", ""))

    def _settle(self) -> None:
        """A terminal answer followed by anything but a rejection was accepted."""
        p = self.pending
        if p is not None and p.terminal is not None and p.failed is None:
            self.accept()

    def accept(self) -> None:
        """The answer in flight passed its checks (or was followed by a record)."""
        p = self.pending
        assert p is not None and p.terminal is not None
        self.accepted += 1
        self.last_accepted = p
        self.pending = None
        action = str(p.command["action"])
        if action in intake_stage.ORCHESTRATION_ACTIONS:
            self.intake.fold_answer(action, p.ik, p.terminal)

    def pre_checkpoint(self, ik: str) -> str | None:
        """The checkpoint recorded before command ``ik`` was first sent, if any.

        A resend of ``ik`` rolls the workspace back to it (DESIGN.md §5.12).
        """
        if self.checkpoint is not None and self.checkpoint[0] == ik:
            return self.checkpoint[1]
        return None


_SYSTEM_FOLDS: dict[str, Callable[[State, Record, Record], None]] = {
    "system.run_started": State._run_started,
    "system.discovery": lambda s, payload, _: s.intake.fold_discovery(payload),
    "system.user_decision": State._user_decision,
    "system.task_started": State._task_started,
    "system.resumed": State._resumed,
    "system.snapshot": State._snapshot,
    "system.agent_started": State._agent_started,
    "system.agent_restarted": State._agent_restarted,
    "system.checkpoint": State._checkpoint,
    "system.verdict": State._verdict,
    "system.verdict_changed": State._verdict_changed,
    "system.command_failed": State._command_failed,
    "system.run_completed": State._run_completed,
    "system.run_failed": lambda s, payload, _: s._run_ended("failed", payload),
    "system.run_aborted": lambda s, payload, _: s._run_ended("aborted", payload),
}


def _text(value: Any) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _positive_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _well_formed_command(record: Record) -> bool:
    """The fields the reducer reads from a command, with their types."""
    to, retry = record.get("to"), record.get("retry")
    return (
        isinstance(record.get("idempotency_key"), str)
        and isinstance(record.get("correlation_id"), str)
        and record.get("action") in ROLE_OF
        and isinstance(record.get("inputs"), dict)
        and isinstance(to, dict)
        and isinstance(to.get("agent_type"), str)
        and isinstance(retry, dict)
        and isinstance(retry.get("attempt"), int)
    )


def _awaits_verdict(record: Record, p: Pending | None) -> bool:
    """Does ``record`` come before the verdict on ``p``'s answer, or turn it down?

    The post-turn checkpoint (and, after a crash, ``system.resumed``) is
    recorded before the answer's artifacts are checked; a rejection after them.
    Any other record means it was accepted.
    """
    if p is None or p.terminal is None:
        return False
    name = record.get("event")
    payload = _object(record.get("payload"))
    if name == "system.checkpoint":
        return payload.get("phase") == "post" and payload.get("idempotency_key") == p.ik
    if name == "system.verdict":
        return payload.get("idempotency_key") == p.ik
    if name == "system.resumed":
        return True  # a resume checks the answer in flight after it says it resumed
    if name not in REJECTIONS:
        return False
    return (
        payload.get("idempotency_key") == p.ik
        or record.get("correlation_id") == p.command["correlation_id"]
    )
