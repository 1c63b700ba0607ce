"""The human transcript: one line per ledger record worth showing.

The same function renders the live console output and
``transcripts/<run_id>.txt`` (rebuilt from the ledger by resume), so the file
and what the user saw never disagree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lorch import ledger
from lorch.atomic import atomic_write_chunks
from lorch.protocol import printable

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


def line(record: dict[str, Any]) -> tuple[str, str] | None:
    """(style, text) for a record, or None if it is not shown.

    Total: a record of unexpected shape (a damaged ledger) is shown as best it can be.
    """
    if record.get("kind") == "command":
        inputs = _obj(record.get("inputs"))
        retry = _obj(record.get("retry"))
        attempt = retry.get("attempt")
        of = _of(retry.get("max_attempts"))
        extra = f", attempt {_num(attempt) + 1:g}{of}" if attempt else ""
        if record.get("action") in ("intake", "task_discovery"):
            again = f" (attempt {_num(attempt) + 1:g}{of})" if attempt else ""
            return ("send", f"[lorch→orchestration] {record.get('action')}{again}")
        return (
            "send",
            f"[lorch→{_obj(record.get('to')).get('agent_type')}] {record.get('action')} "
            f"({record.get('task_id')}, round {inputs.get('round', 1)}{extra})",
        )
    name = str(record.get("event", ""))
    payload = _obj(record.get("payload"))
    who = _obj(record.get("from")).get("agent_type", "?")
    if who == "system":
        if name == "system.user_decision":
            return ("lorch", _decision(payload, str(record.get("status", ""))))
        return _system(name, payload)
    status = record.get("status")
    if name == "artifact.produced":
        arts = [_obj(a) for a in record.get("artifacts") or [] if isinstance(a, dict)]
        shown = ", ".join(
            f"{a.get('path')} ({_size(int(_num(a.get('size'))))})" for a in arts
        ) or payload.get("path", "")
        return ("agent", f"[{who}] artifact.produced {shown}")
    if name == "builder.completed":
        tests = _obj(payload.get("tests"))
        allowed = " (failures allowed)" if tests.get("allowed_failures") is True else ""
        return (
            "ok" if tests.get("status") == "pass" else "bad",
            f"[{who}] builder.completed {status or ''} (tests {tests.get('status', '?')}{allowed}: "
            f"{tests.get('summary', '')})".replace("  ", " "),
        )
    if name == "review.completed":
        where = f" ({payload['review_path']})" if payload.get("review_path") else ""
        return (
            "ok" if status == "approved" else "agent",
            f"[{who}] review.completed {status}{where}",
        )
    if name.startswith("spec."):
        where = f" ({payload['notes_path']})" if payload.get("notes_path") else ""
        return ("ok", f"[{who}] {name}{where}")
    if name == "orchestration.proposed_tasks":
        derived = payload.get("derived_tasks")
        tasks = (
            [str(t.get("id")) for t in derived if isinstance(t, dict)]
            if isinstance(derived, list)
            else []
        )
        return ("agent", f"[{who}] {name}: tasks {', '.join(tasks) or '(none)'}")
    if name == "orchestration.needs_clarification":
        questions = payload.get("questions")
        n = len(questions) if isinstance(questions, list) else 0
        return ("agent", f"[{who}] {name}: {n} question(s)")
    if name == "error":
        from lorch.commands import error_cause

        return ("bad", f"[{who}] error {payload.get('code', 'error')}: {error_cause(payload)}")
    if name == "log" and isinstance(payload.get("message"), str):
        # An ACP agent's turn: its messages, tool calls, plans and lorch's permission answers.
        style = "bad" if payload.get("allowed") is False else "agent"
        return (style, f"[{who}] {payload['message']}")
    if name == "builder.progress":
        return ("agent", f"[{who}] builder.progress {payload.get('message', '')}".rstrip())
    return ("agent", f"[{who}] {name}" + (f" {status}" if status else ""))


def _system(name: str, p: dict[str, Any]) -> tuple[str, str] | None:
    if name == "system.run_started":
        return ("lorch", f"[lorch] run {p.get('run_id')} task {_obj(p.get('task')).get('id')}")
    if name == "system.snapshot":
        return ("lorch", f"[lorch] snapshot {p.get('snapshot_id')} ({p.get('files', 0)} files)")
    if name == "system.agent_started":
        return ("lorch", f"[lorch] started {p.get('role')} (pid {p.get('pid')})")
    if name == "system.agent_exited":
        why = f": {p['reason']}" if isinstance(p.get("reason"), str) and p["reason"] else ""
        return ("bad", f"[lorch] {p.get('role')} exited (code {p.get('returncode')}){why}")
    if name == "system.agent_restarted":
        return (
            "bad",
            f"[lorch] restarting {p.get('role')} in {_num(p.get('delay_s')):.2f} s "
            f"(restart {p.get('restarts')}{_of(p.get('max_restarts'))}): {p.get('reason')}",
        )
    if name == "system.protocol_error":
        return ("bad", f"[lorch] protocol error from {p.get('role')}: {p.get('reason')}")
    if name == "system.command_failed":
        attempt = f"{_num(p.get('attempt')) + 1:g}{_of(p.get('max_attempts'))}"
        return ("bad", f"[lorch] attempt {attempt} failed: {p.get('reason')}")
    if name == "system.artifact_rejected":
        return ("bad", f"[lorch] artifact rejected {p.get('path')}: {p.get('reason')}")
    if name == "system.resumed":
        torn = _obj(p.get("torn_tail"))
        extra = f"; cut a torn last line of {torn.get('size')} bytes" if torn else ""
        orphans = p.get("orphans_killed") if isinstance(p.get("orphans_killed"), list) else []
        extra += f"; ended orphaned agents {', '.join(map(str, orphans))}" if orphans else ""
        return ("lorch", f"[lorch] resumed{extra}")
    if name == "system.checkpoint":
        tree = str(p.get("tree", ""))[:12]
        if p.get("phase") == "pre":
            return ("lorch", f"[lorch] checkpoint {tree} before {p.get('role')}'s turn")
        return (
            "lorch",
            f"[lorch] checkpoint {tree} after {p.get('role')}'s turn: "
            f"{p.get('changed_count', 0)} path(s) changed",
        )
    if name == "system.rollback":
        return (
            "bad",
            f"[lorch] rolled back {p.get('restored_count', 0)} path(s) to checkpoint "
            f"{str(p.get('tree', ''))[:12]} before sending {p.get('role')}'s command again",
        )
    if name == "system.discovery":
        cands = _obj(p.get("metadata")).get("candidates")
        found = [_obj(c).get("path") for c in cands] if isinstance(cands, list) else []
        listed = ", ".join(map(str, found[:5])) + (", …" if len(found) > 5 else "")
        return ("lorch", f"[lorch] discovery: {len(found)} plan/spec candidates ({listed})")
    if name == "system.task_started":
        task = _obj(p.get("task"))
        title = f": {task['title']}" if task.get("title") else ""
        return (
            "lorch",
            f"[lorch] task {_num(p.get('index')) + 1:g} of {p.get('of')}: {task.get('id')}{title}",
        )
    if name == "system.permission":
        paths = p.get("paths") if isinstance(p.get("paths"), list) else []
        where = f" ({', '.join(map(str, paths))})" if paths else ""
        allowed = p.get("allowed") is True
        return (
            "lorch" if allowed else "bad",
            f"[lorch] {p.get('role')}: permission {p.get('kind')} {str(p.get('title'))!r}{where}: "
            f"{'allowed' if allowed else 'refused'} ({p.get('rule')}: {p.get('reason')})",
        )
    if name == "system.run_completed":
        return ("ok", "[lorch] DONE")
    if name == "system.run_aborted":
        return ("bad", f"[lorch] ABORTED: {p.get('reason')}")
    if name in ("system.run_failed", "system.run_aborted"):
        return ("bad", f"[lorch] FAILED: {p.get('reason')}")
    return ("lorch", f"[lorch] {name}")


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


def render(record: dict[str, Any], *, color: bool) -> str | None:
    shown = line(record)
    if shown is None:
        return None
    style, text = shown
    text = printable(text)  # an agent's text cannot drive the terminal
    if color and style in COLORS:
        return f"{COLORS[style]}{text}{RESET}"
    return text


def rebuild(workspace: Path, run_id: str) -> Path:
    """Write ``transcripts/<run_id>.txt`` from the ledger (streaming, atomic)."""
    src = workspace / "events" / f"{run_id}.ndjson"
    target = workspace / "transcripts" / f"{run_id}.txt"
    lines = (render(record, color=False) for record in ledger.read(src, validate=False))
    atomic_write_chunks(target, (f"{text}\n".encode() for text in lines if text is not None))
    return target
