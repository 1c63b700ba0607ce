"""What an ACP agent may do: permission answers and the paths ``fs/*`` may touch.

``session/request_permission`` is answered by the role's policy, one rule per
ACP tool kind (``agents.<role>.permissions``): ``allow``, ``deny``, or
``workspace`` (allowed when every path the request names is inside the
workspace). Unnamed kinds take :data:`DEFAULTS`: edits inside the workspace,
command execution, nothing else. Paths follow the artifact rules (DESIGN.md
§5.8): inside the workspace, no ``..``, no symlink leading out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorch.errors import PathEscape
from lorch.paths import safe_relpath

KINDS = (
    "read",
    "edit",
    "delete",
    "move",
    "search",
    "execute",
    "think",
    "fetch",
    "switch_mode",
    "other",
)
DEFAULTS = {"edit": "workspace", "delete": "workspace", "move": "workspace", "execute": "allow"}
# Keys of a tool call's rawInput that name files (the adapters of Claude Code,
# Codex and Gemini CLI use these).
PATH_KEYS = ("path", "file_path", "filePath", "notebook_path", "abs_path", "destination")


def agent_path(workspace: Path, path: str) -> Path:
    """The file an agent names (absolute, as ACP asks, or relative), if inside the workspace."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise PathEscape(f"path {path!r} is empty or contains NUL")
    if os.path.isabs(path):
        root = os.path.realpath(workspace)
        norm = os.path.normpath(path)
        if ".." in path.split("/"):
            raise PathEscape(f"path {path!r} contains '..'; expected a path inside the workspace")
        for base in {root, os.path.normpath(str(workspace))}:
            if norm == base:
                raise PathEscape(f"path {path!r} is the workspace itself, not a file in it")
            if norm.startswith(base.rstrip(os.sep) + os.sep):
                return safe_relpath(workspace, os.path.relpath(norm, base))
        raise PathEscape(f"path {path!r} is outside the workspace {workspace}")
    return safe_relpath(workspace, path)


def is_inside(workspace: Path, path: str) -> bool:
    try:
        agent_path(workspace, path)
    except PathEscape:
        return False
    return True


@dataclass(frozen=True)
class Decision:
    allowed: bool
    kind: str
    rule: str  # e.g. "edit: workspace"
    reason: str  # why, in words
    option_id: str | None  # the option chosen, None: the request is cancelled
    paths: tuple[str, ...]


def request_paths(tool_call: Any) -> list[str]:
    """Every path a permission request names: its locations and its raw input's path keys."""
    found: list[str] = []
    for loc in getattr(tool_call, "locations", None) or []:
        p = getattr(loc, "path", None)
        if isinstance(p, str):
            found.append(p)
    raw = getattr(tool_call, "raw_input", None)
    if isinstance(raw, dict):
        for key in PATH_KEYS:
            v = raw.get(key)
            if isinstance(v, str) and v:
                found.append(v)
    return list(dict.fromkeys(found))


def _pick(options: Sequence[Any], kinds: Iterable[str]) -> str | None:
    # Prefer the "once" options: lorch decides each request, so a later request
    # is asked again (and recorded) rather than allowed for ever by the agent.
    for kind in kinds:
        for opt in options:
            if getattr(opt, "kind", None) == kind:
                return str(opt.option_id)
    return None


class Policy:
    def __init__(self, workspace: Path, rules: Mapping[str, str]) -> None:
        self.workspace = workspace
        self.rules = {**DEFAULTS, **rules}

    def rule(self, kind: str) -> str:
        return self.rules.get(kind, "deny")

    def decide(self, tool_call: Any, options: Sequence[Any]) -> Decision:
        kind = str(getattr(tool_call, "kind", None) or "other")
        if kind not in KINDS:
            kind = "other"
        paths = request_paths(tool_call)
        rule = self.rule(kind)
        outside = [p for p in paths if not is_inside(self.workspace, p)]
        if rule == "allow":
            allowed, reason = True, f"{kind} is allowed"
        elif rule == "workspace":
            allowed = not outside
            reason = (
                f"{outside[0]} is outside the workspace"
                if outside
                else f"{kind} inside the workspace is allowed"
            )
        else:
            allowed, reason = False, f"{kind} is not allowed"
        if allowed:
            option = _pick(options, ("allow_once", "allow_always"))
        else:
            option = _pick(options, ("reject_once", "reject_always"))
        return Decision(allowed, kind, f"{kind}: {rule}", reason, option, tuple(paths))

    def may_execute(self, command: str) -> Decision:
        """terminal/create runs a command for the agent: the ``execute`` rule decides."""
        rule = self.rule("execute")
        allowed = rule in ("allow", "workspace")
        reason = "execute is allowed" if allowed else "execute is not allowed"
        return Decision(allowed, "execute", f"execute: {rule}", reason, None, ())
