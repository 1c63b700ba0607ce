"""The prompt lorch writes for each command sent to an ACP agent.

A prompt is a :class:`string.Template` (``$name`` placeholders: JSON braces in a
prompt need no escaping) filled from the command's inputs and the run's task.
Each action has a default; a role overrides any of them in
``agents.<role>.prompts``. Templates are checked when lorch.json is loaded, so a
misspelt placeholder stops lorch before any agent starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from string import Template
from typing import Any

from lorch.wire.errors import ConfigError

# Notes longer than this are cut in the prompt (the agent can read the file).
NOTES_LIMIT = 16_384

REVIEW_SHAPE = (
    '{"status": "approved" | "changes_requested", "summary": "<one paragraph>", '
    '"comments": [{"path": "<file>", "line": <n>, "text": "<what to change>"}]}'
)
SPEC_SHAPE = (
    '{"status": "updated" | "no_changes_needed" | "changes_requested", '
    '"summary": "<one paragraph>", "notes": [{"path": "<file>", "text": "<note>"}]}'
)

PLACEHOLDERS = {
    "action": "the command's action (implement, implement_changes, review, update_spec)",
    "task_id": "the task id",
    "goal": "the task's goal (task.goal)",
    "spec_path": "the task's specification file (task.spec_path)",
    "expected_outputs": "the files the builder is expected to write, one per line",
    "round": "the round number of this command",
    "workspace": "the workspace's absolute path (the session's cwd)",
    "verdict_path": "the verdict file to write: reviews/<task>.json, spec_notes/<task>.json",
    "verdict_shape": "the JSON shape of that verdict file",
    "reason": "what implement_changes answers: review or spec",
    "notes_path": "the review or spec notes file being answered",
    "notes": "the content of that file (cut at 16 KiB)",
}

_COMMON = (
    "You are the $role_name for task $task_id. The workspace is $workspace "
    "(your working directory); work only inside it.\n"
    "Goal: $goal\n"
    "Specification: $spec_path\n"
)

DEFAULTS = {
    "implement": _COMMON.replace("$role_name", "builder") + "Files expected:\n$expected_outputs\n\n"
    "Implement the task by creating and editing files in the workspace. Do not commit, "
    "and do not write under reviews/ or spec_notes/. lorch runs the tests itself after "
    "your turn. End with a short summary of what you changed.",
    "implement_changes": _COMMON.replace("$role_name", "builder")
    + "Files expected:\n$expected_outputs\n\n"
    "Round $round: the $reason notes in $notes_path ask for changes:\n\n$notes\n\n"
    "Make those changes in the workspace. Do not commit, and do not write under reviews/ "
    "or spec_notes/. End with a short summary of what you changed.",
    "review": _COMMON.replace("$role_name", "reviewer")
    + "\nReview round $round: read the implementation in the workspace against the goal "
    "and the specification. Do not change any other file. Write your verdict to "
    "$verdict_path as one JSON object of this shape:\n$verdict_shape\n"
    'Use "approved" only when nothing needs to change.',
    "update_spec": _COMMON.replace("$role_name", "spec maintainer")
    + "\nSpec round $round: the implementation was approved. Bring the specification in "
    "line with it where needed (you may edit $spec_path), then write your verdict to "
    "$verdict_path as one JSON object of this shape:\n$verdict_shape\n"
    '"changes_requested" sends the builder back to work, with your notes.',
}

VERDICT_PATHS = {"review": "reviews/{task}.json", "update_spec": "spec_notes/{task}.json"}


def check(template: str, where: str) -> None:
    """Raise :class:`ConfigError` naming ``where`` if ``template`` is not usable."""
    t = Template(template)
    if not t.is_valid():
        raise ConfigError(f"{where}: a '$' that starts no placeholder (write $$ for a dollar sign)")
    unknown = sorted(set(t.get_identifiers()) - set(PLACEHOLDERS))
    if unknown:
        raise ConfigError(
            f"{where}: unknown placeholder ${unknown[0]} (known: "
            + ", ".join(f"${p}" for p in PLACEHOLDERS)
            + ")"
        )


def verdict_path(action: str, task_id: str) -> str | None:
    pattern = VERDICT_PATHS.get(action)
    return pattern.format(task=task_id) if pattern else None


def _notes(workspace: Path, notes_path: Any) -> str:
    if not isinstance(notes_path, str) or not notes_path:
        return "(no notes file)"
    import os

    from lorch.store import safefs
    from lorch.wire.errors import PathEscape

    try:
        # An agent wrote it: no symlink followed, a FIFO refused, never read whole.
        with safefs.opened(os.path.realpath(workspace), notes_path) as fd:
            data = os.read(fd, NOTES_LIMIT)
    except (PathEscape, OSError) as e:
        return f"(cannot read {notes_path}: {e})"
    return data.decode("utf-8", "replace")


def values(command: Mapping[str, Any], task: Mapping[str, Any], workspace: Path) -> dict[str, str]:
    """Every placeholder's value for ``command``."""
    action = str(command["action"])
    inputs = command.get("inputs") or {}
    task_id = str(command["task_id"])
    expected = [str(o.get("path")) for o in command.get("expected_outputs") or []]
    if not expected:
        expected = [str(p) for p in task.get("expected_outputs") or []]
    shape = {"review": REVIEW_SHAPE, "update_spec": SPEC_SHAPE}.get(action, "")
    return {
        "action": action,
        "task_id": task_id,
        "goal": str(task.get("goal") or "(none given)"),
        "spec_path": str(task.get("spec_path") or "(none given)"),
        "expected_outputs": "\n".join(f"- {p}" for p in expected) or "(none listed)",
        "round": str(inputs.get("round", 1)),
        "workspace": str(workspace),
        "verdict_path": verdict_path(action, task_id) or "",
        "verdict_shape": shape,
        "reason": str(inputs.get("reason") or ""),
        "notes_path": str(inputs.get("notes_path") or ""),
        "notes": _notes(workspace, inputs.get("notes_path"))
        if action == "implement_changes"
        else "",
    }


def render(
    command: Mapping[str, Any],
    task: Mapping[str, Any],
    workspace: Path,
    overrides: Mapping[str, str] | None = None,
) -> str:
    action = str(command["action"])
    template = (overrides or {}).get(action) or DEFAULTS.get(action)
    if template is None:
        raise ConfigError(f"no prompt for action {action!r}: set agents.<role>.prompts.{action}")
    return Template(template).safe_substitute(values(command, task, workspace))
