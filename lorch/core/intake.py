"""The intake stage of the workflow (MASTER-SPEC Phase 2), as a pure function of the ledger.

A run with no task begins here. What happens next is decided only from what
the ledger holds, exactly as for the build loop (DESIGN.md §5.3):

    system.discovery → "What should I do?" → intake
      intake → proposed_tasks → pick a plan (or m: task_discovery) → pick tasks → run them
             → needs_clarification → ask each question → intake again
             → plan_conflict → pick one (intake again), m: task_discovery, or abort

Every answer a user gives is a ``system.user_decision`` record (DESIGN.md §5.13)
whose ``payload.question`` names what it answers: a question the ledger
already answers is never asked again, and a question asked but not answered
before a crash is asked again. Questions are named after the idempotency key of
the command whose answer raised them, so they are the same on every replay.

Each ``intake`` carries everything the user said so far (instruction,
clarification answers, a plan chosen at a conflict) in its inputs: a new answer
makes a new idempotency key, so an idempotent agent can never reply with its
answer to an earlier question. All of a run's intake commands share one
correlation id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

from lorch.wire.protocol import Record

INTAKE_TASK = "intake"  # the task id of intake's commands and decisions
CORRELATION = "corr-intake"
ORCHESTRATION_ACTIONS = ("intake", "task_discovery")
ANSWERS = (
    "orchestration.proposed_tasks",
    "orchestration.needs_clarification",
    "orchestration.plan_conflict",
)
DECLINE_WORDS = frozenset({"n", "no", "q", "quit", "decline"})
MORE_WORDS = frozenset({"m", "more"})
ABORT_WORDS = frozenset({"a", "abort"})
ALL_WORDS = frozenset({"", "all", "a", "y", "yes"})


@dataclass(frozen=True)
class Question:
    """A question for the user: what is shown, and how an answer is read."""

    id: str
    step: str  # instruction | clarification | plan | tasks | conflict
    prompt: str
    shown: tuple[str, ...] = ()  # lines printed before the prompt
    choices: tuple[str, ...] = ()  # plan paths or task ids, numbered from 1
    default: str | None = None  # what a blank answer means, when it means anything
    plan: str | None = None  # the plan chosen before this question (tasks)
    ordinal: int = 0  # clarifications answered before this one (for --answer)


@dataclass(frozen=True)
class Decision:
    """A valid answer, ready to be recorded as ``system.user_decision``."""

    status: str  # approved | declined | aborted
    payload: Record


@dataclass(frozen=True)
class Discover:
    """Run discovery and record it (``system.discovery``)."""


@dataclass(frozen=True)
class Ask:
    question: Question


@dataclass(frozen=True)
class Orchestrate:
    """Send ``action`` (intake or task_discovery) with ``inputs`` to the orchestration role."""

    action: str
    inputs: Record


@dataclass(frozen=True)
class Ended:
    """Intake cannot go on: the user declined or aborted, or the agent's answer is unusable."""

    status: str  # aborted | failed
    reason: str


@dataclass(frozen=True)
class Approved:
    """The user approved these tasks: run them, in this order."""

    tasks: list[Record]


@dataclass
class Intake:
    """What the ledger says about intake (small: answers and the last proposal)."""

    active: bool = False
    discovery: Record | None = None
    instruction: str | None = None
    answered: dict[str, Decision] = field(default_factory=dict)
    clarifications: list[Record] = field(default_factory=list)
    conflict_plan: str | None = None
    answer: Record | None = None  # last accepted orchestration answer
    answer_key: str = ""  # the key of the command it answered
    discoveries: int = 0  # task_discovery commands sent
    approved_plan: str | None = None
    tasks: list[Record] | None = None  # approved tasks, in order
    ended: tuple[str, str] | None = None  # (status, reason) when the user ended the run

    # -- folding ---------------------------------------------------------------

    def fold_discovery(self, payload: Record) -> None:
        metadata = payload.get("metadata")
        self.discovery = dict(metadata) if isinstance(metadata, dict) else {}

    def fold_decision(self, status: str, payload: Record) -> None:
        qid = payload.get("question")
        if not isinstance(qid, str) or qid in self.answered:
            return  # answered once already: the first answer stands
        decision = Decision(status, payload)
        self.answered[qid] = decision
        step = payload.get("step")
        if status != "approved":
            what = "aborted" if status == "aborted" else "declined"
            self.ended = ("aborted", f"intake {what} by the user at the {step} prompt")
            return
        if step == "instruction":
            self.instruction = _text(payload.get("answer"))
        elif step == "clarification":
            self.clarifications.append(
                {"question": _text(payload.get("prompt")), "answer": _text(payload.get("answer"))}
            )
        elif step == "conflict" and not payload.get("more_options"):
            plan = payload.get("approved_plan")
            self.conflict_plan = plan if isinstance(plan, str) else None
        elif step == "tasks" and self.answer is not None:
            plan = payload.get("approved_plan")
            self.approved_plan = plan if isinstance(plan, str) else None
            wanted = payload.get("approved_tasks")
            answer = self.answer.get("payload")
            derived = answer.get("derived_tasks") if isinstance(answer, dict) else None
            proposed = {
                t["id"]: t
                for t in (derived if isinstance(derived, list) else [])
                if isinstance(t, dict) and isinstance(t.get("id"), str)
            }
            chosen = wanted if isinstance(wanted, list) else []
            self.tasks = [task_of(proposed[i], self) for i in chosen if i in proposed]

    def fold_answer(self, action: str, key: str, event: Record) -> None:
        """An orchestration command's terminal answer was accepted."""
        if action == "task_discovery":
            self.discoveries += 1
        self.answer = event
        self.answer_key = key


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def task_of(proposed: Record, intake: Intake) -> Record:
    """The task the builder receives (``inputs.task``) for an approved derived task."""
    title = str(proposed.get("title", ""))
    files = proposed.get("files")
    task: Record = {
        "id": str(proposed["id"]),
        "title": title,
        "goal": str(proposed.get("goal") or proposed.get("description") or title),
        "files": [str(f) for f in files] if isinstance(files, list) else [],
        "plan": intake.approved_plan,
        "instruction": intake.instruction,
    }
    return task


# -- the orchestration agent's answers --------------------------------------------


@cache
def _answer_validator() -> Any:
    from jsonschema import Draft202012Validator

    from lorch.wire.resources import schema_path

    with open(schema_path("orchestration"), encoding="utf-8") as f:
        return Draft202012Validator(json.load(f))


def answer_problem(event: Record) -> str | None:
    """What is wrong with an orchestration answer, as one line naming the field; or None."""
    name = event.get("event")
    if name not in ANSWERS:
        return f"{name}: not an answer to intake (expected one of {', '.join(ANSWERS)})"
    doc = {"event": name, "payload": event.get("payload") or {}}
    errors = sorted(_answer_validator().iter_errors(doc), key=lambda e: list(e.absolute_path))
    if errors:
        err = max(errors, key=lambda e: len(e.absolute_path))
        while err.context:
            err = max(err.context, key=lambda c: len(c.absolute_path))
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err.absolute_path)
        message = err.message if len(err.message) <= 160 else err.message[:159] + "…"
        return f"{name}: {where.lstrip('.') or 'payload'}: {message}"
    if name == "orchestration.proposed_tasks":
        ids = [t["id"] for t in doc["payload"]["derived_tasks"]]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            return f"{name}: payload.derived_tasks: task id {dup[0]!r} appears twice"
        if INTAKE_TASK in ids:
            return f"{name}: payload.derived_tasks: task id {INTAKE_TASK!r} is reserved"
    return None


# -- deciding ----------------------------------------------------------------------


def intake_inputs(s: Intake) -> Record:
    inputs: Record = {"user_instruction": s.instruction, "discovery_metadata": s.discovery}
    if s.clarifications:
        inputs["clarifications"] = list(s.clarifications)
    if s.conflict_plan is not None:
        inputs["plan"] = s.conflict_plan
    return inputs


def discovery_inputs(s: Intake) -> Record:
    assert s.answer is not None
    payload = s.answer.get("payload") or {}
    previous = [c["path"] for c in payload.get("plan_candidates", [])] or sorted(
        {p for c in payload.get("conflicts", []) for p in c.get("paths", [])}
    )
    return {
        **intake_inputs(s),
        "context": {
            "previous_candidates": previous,
            "reason": "the user asked for more options",
            "round": s.discoveries + 1,
        },
    }


def example_instruction(metadata: dict[str, Any]) -> str:
    """An example for the first prompt, naming the best candidate when there is one."""
    candidates = metadata.get("candidates") or []
    if candidates:
        return f"Use {candidates[0]['path']} and manage its implementation"
    return "Add a greeting module with a test"


def instruction_question(discovery: Record | None) -> Question:
    example = example_instruction(discovery or {})
    found = [c["path"] for c in (discovery or {}).get("candidates", [])[:5]]
    shown = (f"plan and spec files found: {', '.join(found)}",) if found else ()
    return Question(
        id="instruction",
        step="instruction",
        prompt=f'What should I do? (e.g. "{example}")',
        shown=shown,
    )


def questions(s: Intake) -> list[Question]:
    """The questions the last orchestration answer raises, in the order they are asked."""
    ans = s.answer
    assert ans is not None
    key = s.answer_key
    payload = ans.get("payload") or {}
    name = ans.get("event")
    if name == "orchestration.needs_clarification":
        qs = payload["questions"]
        return [
            Question(id=f"{key}#q{i + 1}", step="clarification", prompt=str(q))
            for i, q in enumerate(qs)
        ]
    if name == "orchestration.plan_conflict":
        return [_conflict_question(key, payload)]
    return _proposal_questions(s, key, payload)


def _conflict_question(key: str, payload: dict[str, Any]) -> Question:
    shown: list[str] = ["The orchestration agent found conflicting plans:"]
    paths: list[str] = []
    for c in payload["conflicts"]:
        shown.append(f"  {' vs '.join(c['paths'])}: {c['reason']}")
        paths.extend(p for p in c["paths"] if p not in paths)
    if payload.get("suggested_resolution"):
        shown.append(f"  suggested: {payload['suggested_resolution']}")
    shown.extend(f"  {i}. {p}" for i, p in enumerate(paths, 1))
    shown.append("  m. ask for more options")
    shown.append("  a. abort (lorch never edits plan files: resolve it yourself)")
    return Question(
        id=f"{key}#conflict",
        step="conflict",
        prompt="Which plan should I use? [number, m, a]",
        shown=tuple(shown),
        choices=tuple(paths),
    )


def _proposal_questions(s: Intake, key: str, payload: dict[str, Any]) -> list[Question]:
    cands = sorted(payload["plan_candidates"], key=lambda c: (-c["confidence"], c["path"]))
    tasks = payload["derived_tasks"]
    plan_lines = ["Plan candidates:"]
    plan_lines.extend(
        f"  {i}. {c['path']} (confidence {c['confidence']:.2f})" for i, c in enumerate(cands, 1)
    )
    plan_lines.append("  m. ask for more options")
    if payload.get("notes"):
        plan_lines.append(f"  notes: {payload['notes']}")
    task_lines = ["Proposed tasks:"]
    for i, t in enumerate(tasks, 1):
        files = f" ({', '.join(t['files'])})" if t.get("files") else ""
        task_lines.append(f"  {i}. {t['id']}: {t['title']}{files}")
    if not tasks:
        task_lines.append("  (none)")
    plan_q = f"{key}#plan"
    chosen = s.answered.get(plan_q)
    return [
        Question(
            id=plan_q,
            step="plan",
            prompt="Which plan should I use? [1, number, m, n to decline]",
            shown=tuple(plan_lines),
            choices=tuple(c["path"] for c in cands),
            default="1",
        ),
        Question(
            id=f"{key}#tasks",
            step="tasks",
            prompt="Which tasks should I run? [all, numbers like 1,2, n to decline]",
            shown=tuple(task_lines),
            choices=tuple(str(t["id"]) for t in tasks),
            default="all",
            plan=None if chosen is None else chosen.payload.get("approved_plan"),
        ),
    ]


Next = Discover | Ask | Orchestrate | Ended | Approved


def next_intake(s: Intake) -> Next:
    """What intake needs next, from the folded ledger alone."""
    if s.ended is not None:
        return Ended(*s.ended)
    if s.discovery is None:
        return Discover()
    if s.instruction is None:
        return Ask(instruction_question(s.discovery))
    if s.tasks is not None:
        return Approved(s.tasks)
    if s.answer is None:
        return Orchestrate("intake", intake_inputs(s))
    problem = answer_problem(s.answer)
    if problem is not None:
        return Ended("failed", f"agent orchestration: {problem}")
    for q in questions(s):
        d = s.answered.get(q.id)
        if d is None:
            return Ask(replace(q, ordinal=len(s.clarifications)))
        if d.payload.get("more_options"):
            return Orchestrate("task_discovery", discovery_inputs(s))
    return Orchestrate("intake", intake_inputs(s))


# -- reading an answer -----------------------------------------------------------------


def interpret(q: Question, text: str | None, source: str) -> Decision | str:
    """A decision from what the user typed (None: end of input), or why it is not one."""
    base: Record = {
        "question": q.id,
        "step": q.step,
        "prompt": q.prompt,
        "answer": text,
        "source": source,
    }
    if text is None:
        return Decision("declined", base)
    answer = text.strip()
    word = answer.lower()
    if q.step in ("instruction", "clarification"):
        if not answer:
            return "an answer is needed (end of input declines)"
        return Decision("approved", {**base, "answer": answer})
    if q.step in ("plan", "conflict"):
        if not answer and q.default is not None:
            answer = word = q.default
        if word in MORE_WORDS:
            return Decision("approved", {**base, "more_options": True})
        if q.step == "conflict" and word in ABORT_WORDS:
            return Decision("aborted", base)
        if q.step == "plan" and word in DECLINE_WORDS:
            return Decision("declined", base)
        plan = _pick_one(q.choices, answer)
        if plan is None:
            return f"expected a number from 1 to {len(q.choices)}, a listed path, or m"
        return Decision("approved", {**base, "approved_plan": plan})
    # tasks
    if word in DECLINE_WORDS:
        return Decision("declined", base)
    if word in ALL_WORDS:
        chosen = list(q.choices)
    else:
        picked = _pick_many(q.choices, answer)
        if isinstance(picked, str):
            return picked
        chosen = picked
    return Decision("approved", {**base, "approved_plan": q.plan, "approved_tasks": chosen})


def _pick_one(choices: tuple[str, ...], answer: str) -> str | None:
    if answer.isdigit() and 1 <= int(answer) <= len(choices):
        return choices[int(answer) - 1]
    return answer if answer in choices else None


def _pick_many(choices: tuple[str, ...], answer: str) -> list[str] | str:
    out: list[str] = []
    for part in (p.strip() for p in answer.replace(" ", ",").split(",")):
        if not part:
            continue
        one = _pick_one(choices, part)
        if one is None:
            return f"{part!r} is not a listed task (numbers 1 to {len(choices)} or task ids)"
        if one not in out:
            out.append(one)
    if not out:
        return "no task chosen"
    # Tasks run in the order they were proposed, whatever order they were named in.
    return [c for c in choices if c in out]
