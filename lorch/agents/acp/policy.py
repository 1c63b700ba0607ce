"""What an ACP agent may do: permission answers and the paths ``fs/*`` may touch.

``session/request_permission`` is answered by the role's policy, one rule per
ACP tool kind (``agents.<role>.permissions``): ``allow``, ``deny``, or
``workspace`` (allowed when every path the request names is inside the
workspace). Unnamed kinds take :data:`DEFAULTS`: edits inside the workspace,
command execution, nothing else. Whatever the rule, a request is refused when
any path it names is outside the workspace or lorch's own
(:func:`lorch.store.paths.lorch_owned`), or in another role's verdict directory.
Paths follow the artifact rules (DESIGN.md §5.8): inside the workspace, no
``..``, no symlink leading out.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorch.store.paths import lorch_owned, safe_relpath, verdict_owner
from lorch.wire.errors import PathEscape

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
# Codex and Gemini CLI use these), and keys that hold a list of them.
PATH_KEYS = (
    "path",
    "file_path",
    "filePath",
    "notebook_path",
    "abs_path",
    "absolute_path",
    "destination",
    "source",
    "cwd",
    "old_path",
    "new_path",
    "oldPath",
    "newPath",
    "dir_path",
    "directory",
)
PATH_LIST_KEYS = ("paths", "file_paths", "files", "locations")
# Keys whose strings are content, not paths (text written, a command line, a
# search pattern): a ``..`` or a leading ``/`` in them names no file to check.
CONTENT_KEYS = frozenset(
    {
        "command",
        "content",
        "contents",
        "description",
        "new_string",
        "old_string",
        "new_source",
        "pattern",
        "query",
        "prompt",
        "text",
        "title",
        "url",
        "instruction",
        "reason",
        "justification",
        "glob",
        "include",
        "exclude",
    }
)
RAW_DEPTH = 6  # how deep an unknown rawInput is searched for path-like strings
RAW_ITEMS = 1000  # how many of its strings at most; past it, the request is refused


def agent_relpath(workspace: Path, path: str, *, root_ok: bool = False) -> str:
    """The workspace-relative form of a path an agent names (absolute, as ACP asks, or relative).

    Lexical only (no file system access): PathEscape for empty, NUL, ``~``,
    ``..``, an absolute path outside the workspace, or the workspace itself
    (``""`` for it when ``root_ok``: a directory such as a command's ``cwd``).
    """
    if not isinstance(path, str) or not path or "\x00" in path:
        raise PathEscape(f"path {path!r} is empty or contains NUL")
    if path.startswith("~"):
        raise PathEscape(f"path {path!r} starts with '~'; expected a path inside the workspace")
    if ".." in path.replace("\\", "/").split("/"):
        raise PathEscape(f"path {path!r} contains '..'; expected a path inside the workspace")
    if not os.path.isabs(path):
        rel = "/".join(p for p in path.split("/") if p and p != ".")
        if not rel and root_ok:
            return ""
        if not rel:
            raise PathEscape(f"path {path!r} is the workspace itself, not a file in it")
        return rel
    norm = os.path.normpath(path)
    for base in dict.fromkeys((_real(workspace), os.path.normpath(str(workspace)))):
        if norm == base and root_ok:
            return ""
        if norm == base:
            raise PathEscape(f"path {path!r} is the workspace itself, not a file in it")
        if norm.startswith(base.rstrip(os.sep) + os.sep):
            return os.path.relpath(norm, base).replace(os.sep, "/")
    raise PathEscape(f"path {path!r} is outside the workspace {workspace}")


def _real(workspace: Path) -> str:
    return os.path.realpath(workspace)


def agent_path(workspace: Path, path: str) -> Path:
    """The file an agent names (absolute, as ACP asks, or relative), if inside the workspace."""
    return safe_relpath(workspace, agent_relpath(workspace, path))


def refusal(
    workspace: Path, path: str, role: str | None = None, *, write: bool = False
) -> str | None:
    """Why an agent of ``role`` may not touch ``path``, or None.

    Outside the workspace, lorch's own, or — for a write — another role's
    verdict directory. Lexical: the file service also refuses every symlink.
    """
    try:
        rel = agent_relpath(workspace, path, root_ok=True)
    except PathEscape as e:
        if "is outside the workspace" in str(e):
            return f"{path} is outside the workspace"
        return str(e)
    if (why := lorch_owned(rel)) is not None:
        return why
    owner = verdict_owner(rel)
    if write and owner is not None and owner != role:
        return f"{rel} is the {owner}'s verdict; only the {owner} writes there, during its turn"
    return None


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
    """Every path a permission request names: its locations and its raw input's paths.

    Known keys (:data:`PATH_KEYS`, :data:`PATH_LIST_KEYS`) anywhere in the raw
    input are paths; so is any other path-like string (see :func:`_path_like`)
    under a key that is not content (:data:`CONTENT_KEYS`), and a path-like
    key of a mapping (one adapter keys its changes by file).
    """
    found: list[str] = []
    for loc in getattr(tool_call, "locations", None) or []:
        p = getattr(loc, "path", None)
        if isinstance(p, str):
            found.append(p)
    found.extend(_raw_paths(getattr(tool_call, "raw_input", None))[0])
    return list(dict.fromkeys(found))


def _path_like(value: str) -> bool:
    """A string that names a file lorch cannot vouch for: absolute, ``~``, or with ``..``."""
    return value.startswith(("/", "~", "\\")) or ".." in value.replace("\\", "/").split("/")


def _raw_paths(raw: Any) -> tuple[list[str], bool]:
    """(the paths in a raw input, whether it was too large or deep to search whole)."""
    found: list[str] = []
    stack: list[tuple[Any, str | None, int]] = [(raw, None, 0)]
    count = 0
    while stack:
        value, key, depth = stack.pop()
        count += 1
        if count > RAW_ITEMS or depth > RAW_DEPTH:
            return found, True
        if key in CONTENT_KEYS:
            continue
        if isinstance(value, str):
            if value and (key in PATH_KEYS or key in PATH_LIST_KEYS or _path_like(value)):
                found.append(value)
        elif isinstance(value, Mapping):
            for k, v in value.items():
                if isinstance(k, str) and _path_like(k):
                    found.append(k)
                stack.append((v, str(k), depth + 1))
        elif isinstance(value, list | tuple):
            stack.extend((v, key, depth + 1) for v in value)
    return found, False


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

    def decide(self, tool_call: Any, options: Sequence[Any], role: str | None = None) -> Decision:
        """The answer to a permission request of an agent of ``role``.

        Any path it names that the role may not touch (:func:`refusal`; a
        read, search or fetch never writes) refuses it, whatever the kind's rule.
        """
        kind = str(getattr(tool_call, "kind", None) or "other")
        if kind not in KINDS:
            kind = "other"
        paths = request_paths(tool_call)
        rule = self.rule(kind)
        write = kind not in ("read", "search", "think", "fetch")
        refused = [
            (p, why)
            for p in paths
            if (why := refusal(self.workspace, p, role, write=write)) is not None
        ]
        if _raw_paths(getattr(tool_call, "raw_input", None))[1]:
            refused.append(("rawInput", "its rawInput is too large or too deep to check"))
        if refused and rule != "deny":
            allowed, reason = False, refused[0][1]
        elif rule == "allow":
            allowed, reason = True, f"{kind} is allowed"
        elif rule == "workspace":
            allowed, reason = True, f"{kind} inside the workspace is allowed"
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
