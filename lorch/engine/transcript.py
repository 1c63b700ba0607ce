"""The human transcript: one line per ledger record worth showing.

The same function renders the live console output and
``transcripts/<run_id>.txt`` (rebuilt from the ledger by resume), so the file
and what the user saw never disagree.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lorch.store import layout, ledger
from lorch.store.atomic import atomic_write_chunks
from lorch.wire.textsafe import visible

COLORS = {"lorch": "\x1b[36m", "send": "\x1b[35m", "ok": "\x1b[32m", "bad": "\x1b[31m"}
RESET = "\x1b[0m"


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.1f} MiB"


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _of(limit: Any) -> str:
    """ " of N" for a counter whose limit the record carries (older records do not)."""
    return f" of {_num(limit):g}" if _num(limit) > 0 else ""


def _num(value: Any) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else 0.0


Line = tuple[str, str]


def line(record: dict[str, Any]) -> Line | None:
    """(style, text) for a record, or None if it is not shown.

    Total: a record of unexpected shape (a damaged ledger) is shown as best it can be.
    """
    if record.get("kind") == "command":
        return _command(record)
    name = str(record.get("event", ""))
    payload = _obj(record.get("payload"))
    who = _obj(record.get("from")).get("agent_type", "?")
    if who == "system":
        if name == "system.user_decision":
            return ("lorch", _decision(payload, str(record.get("status", ""))))
        system = _SYSTEM.get(name)
        return system(payload) if system else ("lorch", f"[lorch] {name}")
    status = record.get("status")
    event = _EVENTS.get("spec." if name.startswith("spec.") else name)
    if event is not None:
        return event(f"[{who}] {name}", status, payload, record)
    return ("agent", f"[{who}] {name}" + (f" {status}" if status else ""))


def _command(record: dict[str, Any]) -> Line:
    inputs = _obj(record.get("inputs"))
    retry = _obj(record.get("retry"))
    attempt = retry.get("attempt")
    of = _of(retry.get("max_attempts"))
    if record.get("action") in ("intake", "task_discovery"):
        again = f" (attempt {_num(attempt) + 1:g}{of})" if attempt else ""
        return ("send", f"[lorch→orchestration] {record.get('action')}{again}")
    extra = f", attempt {_num(attempt) + 1:g}{of}" if attempt else ""
    return (
        "send",
        f"[lorch→{_obj(record.get('to')).get('agent_type')}] {record.get('action')} "
        f"({record.get('task_id')}, round {inputs.get('round', 1)}{extra})",
    )


# -- agents' events: (head "[who] event", status, payload, record) -> line --------------

Shown = Callable[[str, Any, dict[str, Any], dict[str, Any]], Line]


def _artifact(head: str, status: Any, p: dict[str, Any], record: dict[str, Any]) -> Line:
    arts = [_obj(a) for a in record.get("artifacts") or [] if isinstance(a, dict)]
    shown = ", ".join(f"{a.get('path')} ({_size(int(_num(a.get('size'))))})" for a in arts)
    return ("agent", f"{head} {shown or p.get('path', '')}")


def _built(head: str, status: Any, p: dict[str, Any], record: dict[str, Any]) -> Line:
    tests = _obj(p.get("tests"))
    allowed = " (failures allowed)" if tests.get("allowed_failures") is True else ""
    return (
        "ok" if tests.get("status") == "pass" else "bad",
        f"{head} {status or ''} (tests {tests.get('status', '?')}{allowed}: "
        f"{tests.get('summary', '')})".replace("  ", " "),
    )


def _reviewed(head: str, status: Any, p: dict[str, Any], record: dict[str, Any]) -> Line:
    where = f" ({p['review_path']})" if p.get("review_path") else ""
    return ("ok" if status == "approved" else "agent", f"{head} {status}{where}")


def _spec(head: str, status: Any, p: dict[str, Any], record: dict[str, Any]) -> Line:
    where = f" ({p['notes_path']})" if p.get("notes_path") else ""
    return ("ok", f"{head}{where}")


def _proposed(head: str, status: Any, p: dict[str, Any], record: dict[str, Any]) -> Line:
    derived = p.get("derived_tasks")
    tasks = (
        [str(t.get("id")) for t in derived if isinstance(t, dict)]
        if isinstance(derived, list)
        else []
    )
    return ("agent", f"{head}: tasks {', '.join(tasks) or '(none)'}")


def _clarify(head: str, status: Any, p: dict[str, Any], record: dict[str, Any]) -> Line:
    questions = p.get("questions")
    n = len(questions) if isinstance(questions, list) else 0
    return ("agent", f"{head}: {n} question(s)")


def _error(head: str, status: Any, p: dict[str, Any], record: dict[str, Any]) -> Line:
    from lorch.core.commands import error_cause

    return ("bad", f"{head} {p.get('code', 'error')}: {error_cause(p)}")


def _log(head: str, status: Any, p: dict[str, Any], record: dict[str, Any]) -> Line:
    if not isinstance(p.get("message"), str):
        return ("agent", head + (f" {status}" if status else ""))
    # An ACP agent's turn: its messages, tool calls, plans and lorch's permission answers.
    who = _obj(record.get("from")).get("agent_type", "?")
    return ("bad" if p.get("allowed") is False else "agent", f"[{who}] {p['message']}")


def _progress(head: str, status: Any, p: dict[str, Any], record: dict[str, Any]) -> Line:
    return ("agent", f"{head} {p.get('message', '')}".rstrip())


_EVENTS: dict[str, Shown] = {
    "artifact.produced": _artifact,
    "builder.completed": _built,
    "review.completed": _reviewed,
    "spec.": _spec,
    "orchestration.proposed_tasks": _proposed,
    "orchestration.needs_clarification": _clarify,
    "error": _error,
    "log": _log,
    "builder.progress": _progress,
}


# -- lorch's own records ---------------------------------------------------------------


def _exited(p: dict[str, Any]) -> Line:
    why = f": {p['reason']}" if isinstance(p.get("reason"), str) and p["reason"] else ""
    return ("bad", f"[lorch] {p.get('role')} exited (code {p.get('returncode')}){why}")


def _restarted(p: dict[str, Any]) -> Line:
    return (
        "bad",
        f"[lorch] restarting {p.get('role')} in {_num(p.get('delay_s')):.2f} s "
        f"(restart {p.get('restarts')}{_of(p.get('max_restarts'))}): {p.get('reason')}",
    )


def _failed(p: dict[str, Any]) -> Line:
    attempt = f"{_num(p.get('attempt')) + 1:g}{_of(p.get('max_attempts'))}"
    return ("bad", f"[lorch] attempt {attempt} failed: {p.get('reason')}")


def _resumed(p: dict[str, Any]) -> Line:
    torn = _obj(p.get("torn_tail"))
    extra = f"; cut a torn last line of {torn.get('size')} bytes" if torn else ""
    orphans = p.get("orphans_killed") if isinstance(p.get("orphans_killed"), list) else []
    extra += f"; ended orphaned agents {', '.join(map(str, orphans))}" if orphans else ""
    return ("lorch", f"[lorch] resumed{extra}")


def _checkpoint(p: dict[str, Any]) -> Line:
    tree = str(p.get("tree", ""))[:12]
    if p.get("phase") == "pre":
        return ("lorch", f"[lorch] checkpoint {tree} before {p.get('role')}'s turn")
    return (
        "lorch",
        f"[lorch] checkpoint {tree} after {p.get('role')}'s turn: "
        f"{p.get('changed_count', 0)} path(s) changed",
    )


def _rollback(p: dict[str, Any]) -> Line:
    return (
        "bad",
        f"[lorch] rolled back {p.get('restored_count', 0)} path(s) to checkpoint "
        f"{str(p.get('tree', ''))[:12]} before sending {p.get('role')}'s command again",
    )


def _discovery(p: dict[str, Any]) -> Line:
    cands = _obj(p.get("metadata")).get("candidates")
    found = [_obj(c).get("path") for c in cands] if isinstance(cands, list) else []
    listed = ", ".join(map(str, found[:5])) + (", …" if len(found) > 5 else "")
    return ("lorch", f"[lorch] discovery: {len(found)} plan/spec candidates ({listed})")


def _task_started(p: dict[str, Any]) -> Line:
    task = _obj(p.get("task"))
    title = f": {task['title']}" if task.get("title") else ""
    return (
        "lorch",
        f"[lorch] task {_num(p.get('index')) + 1:g} of {p.get('of')}: {task.get('id')}{title}",
    )


def _permission(p: dict[str, Any]) -> Line:
    paths = p.get("paths") if isinstance(p.get("paths"), list) else []
    where = f" ({', '.join(map(str, paths))})" if paths else ""
    allowed = p.get("allowed") is True
    return (
        "lorch" if allowed else "bad",
        f"[lorch] {p.get('role')}: permission {p.get('kind')} {str(p.get('title'))!r}{where}: "
        f"{'allowed' if allowed else 'refused'} ({p.get('rule')}: {p.get('reason')})",
    )


_SYSTEM: dict[str, Callable[[dict[str, Any]], Line]] = {
    "system.run_started": lambda p: (
        "lorch",
        f"[lorch] run {p.get('run_id')} task {_obj(p.get('task')).get('id')}",
    ),
    "system.snapshot": lambda p: (
        "lorch",
        f"[lorch] snapshot {p.get('snapshot_id')} ({p.get('files', 0)} files)",
    ),
    "system.agent_started": lambda p: (
        "lorch",
        f"[lorch] started {p.get('role')} (pid {p.get('pid')})",
    ),
    "system.agent_exited": _exited,
    "system.agent_restarted": _restarted,
    "system.protocol_error": lambda p: (
        "bad",
        f"[lorch] protocol error from {p.get('role')}: {p.get('reason')}",
    ),
    "system.command_failed": _failed,
    "system.artifact_rejected": lambda p: (
        "bad",
        f"[lorch] artifact rejected {p.get('path')}: {p.get('reason')}",
    ),
    "system.resumed": _resumed,
    "system.checkpoint": _checkpoint,
    "system.rollback": _rollback,
    "system.rewind": lambda p: (
        "lorch",
        f"[lorch] {'undo: ' if p.get('undo') else ''}rewound the workspace to "
        f"{'after' if p.get('phase') == 'post' else 'before'} step {p.get('step')} "
        f"(checkpoint {str(p.get('tree'))[:12]}; it was {str(p.get('saved'))[:12]}): "
        f"{p.get('changed_count', 0)} path(s) differ",
    ),
    "system.discovery": _discovery,
    "system.task_started": _task_started,
    "system.permission": _permission,
    "system.verdict": lambda p: (
        "lorch",
        f"[lorch] captured {p.get('path')}: "
        + (f"{str(p['sha256'])[:19]}…" if p.get("sha256") else str(p.get("problem") or "missing")),
    ),
    "system.verdict_changed": lambda p: (
        "bad",
        f"[lorch] {p.get('path')} changed after its turn ({str(p.get('captured'))[:19]}… now "
        f"{str(p.get('now'))[:19]}…): ignored, the verdict captured at the turn's end counts",
    ),
    "system.run_completed": lambda p: ("ok", "[lorch] DONE"),
    "system.run_aborted": lambda p: ("bad", f"[lorch] ABORTED: {p.get('reason')}"),
    "system.run_failed": lambda p: ("bad", f"[lorch] FAILED: {p.get('reason')}"),
}


def _decision(p: dict[str, Any], status: str) -> str:
    step = p.get("step")
    if p.get("answer") is None:
        what = "no answer (end of input)"
    elif p.get("more_options"):
        what = "more options"
    elif step == "tasks":
        tasks = p.get("approved_tasks")
        named = ", ".join(map(str, tasks)) if isinstance(tasks, list) else ""
        what = f"plan {p.get('approved_plan')}, tasks {named}"
    elif step in ("plan", "conflict") and p.get("approved_plan"):
        what = f"plan {p.get('approved_plan')}"
    else:
        what = repr(p.get("answer"))
    return f"[lorch] {step} {status}: {what} ({p.get('source')})"


# What starts each line of a shown text after its first: no line an agent's text
# begins can look like one of lorch's own (they start with "[").
CONTINUATION = "    "
_SURROGATE = re.compile("[\ud800-\udfff]")  # not encodable: json.loads lets them through


def shown(text: str) -> str:
    """``text`` made safe for a terminal: it cannot drive it or forge a line of lorch's.

    Control characters (``\\r``, ESC, BEL, C1) and bidi overrides are written
    as escapes (:func:`lorch.wire.textsafe.visible`), as is a lone surrogate; each
    line after the first (``\\n`` or ``\\r\\n`` ends one) starts with
    :data:`CONTINUATION` unless it starts with a space or a tab already.
    """
    first, *rest = (
        _SURROGATE.sub(_escape, visible(p)) for p in text.replace("\r\n", "\n").split("\n")
    )
    # A line indented already (lorch's own lists) cannot pass for one of lorch's.
    return "\n".join([first, *(p if p[:1] in (" ", "\t") else CONTINUATION + p for p in rest)])


def _escape(m: re.Match[str]) -> str:
    return f"\\u{ord(m.group()):04x}"


def render(record: dict[str, Any], *, color: bool) -> str | None:
    shown_line = line(record)
    if shown_line is None:
        return None
    style, text = shown_line
    text = shown(text)  # an agent's text cannot drive the terminal
    if color and style in COLORS:
        return f"{COLORS[style]}{text}{RESET}"
    return text


def rebuild(workspace: Path, run_id: str) -> Path:
    """Write ``transcripts/<run_id>.txt`` from the ledger (streaming, atomic)."""
    src = layout.ledger(workspace, run_id)
    target = layout.transcript(workspace, run_id)
    lines = (render(record, color=False) for record in ledger.read(src, validate=False))
    atomic_write_chunks(target, (f"{text}\n".encode() for text in lines if text is not None))
    return target
