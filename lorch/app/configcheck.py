"""Two-tier validation of ``lorch.json``: errors block, warnings inform.

Every problem is a :class:`Problem`: its level, the JSON path of the field at
fault, what is wrong, and what to do about it. Errors are what
:func:`lorch.app.config.parse` refuses (the schema, the values lorch cannot honour,
its own checks such as prompt templates) and a ``version`` this lorch cannot
read; warnings are settings that load but are probably not what the user meant
(:func:`warnings`). :func:`environment` adds what ``lorch doctor`` looks at
without starting any agent: commands on PATH, fixtures, keys present.

Nothing here prints or exits: ``lorch config check`` (:mod:`lorch.app.configcli`)
does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lorch.agents import registry
from lorch.agents.known_agents import PROXY_VARS, known
from lorch.app import config
from lorch.app.config import Config
from lorch.wire import schemas
from lorch.wire.errors import ConfigError
from lorch.wire.redact import SECRET_SUFFIXES

ERROR = "error"
WARNING = "warning"

# The versions of lorch.json this lorch reads, and what changed since each: None
# for a current one. "1" (lorch's own spelling) and "1.0" (MASTER-SPEC §8.2's) are
# the same format v1, read alike and freely mixed, so neither is older today.
KNOWN_VERSIONS: dict[str, str | None] = {"1": None, "1.0": None}


@dataclass(frozen=True)
class Problem:
    level: str  # ERROR or WARNING
    path: str  # the JSON path of the field at fault: $.agents.builder.cmd
    message: str  # what is wrong
    fix: str  # what to do about it

    def line(self) -> str:
        return f"{self.path}: {self.message} (fix: {self.fix})"

    def as_json(self) -> dict[str, str]:
        return {"level": self.level, "path": self.path, "message": self.message, "fix": self.fix}


# -- versions -------------------------------------------------------------------


def _version_tuple(v: str) -> tuple[int, ...] | None:
    if not re.fullmatch(r"\d{1,6}(\.\d{1,6}){0,2}", v):
        return None
    parts = [int(p) for p in v.split(".")]
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def version_problem(value: Any, known: Mapping[str, str | None] = KNOWN_VERSIONS) -> Problem | None:
    """What is wrong with ``"version": value``, or None for a current version.

    Newer than every known one: an error (this lorch cannot know its fields).
    A known one with a note of what changed since: a warning. Versions compare
    as numbers: "1" and "1.0" are equal.
    """
    where = "$.version"
    names = " and ".join(json.dumps(k) for k in known)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return Problem(
            ERROR,
            where,
            f"{json.dumps(value)} is a number",
            f"write it as a string: {json.dumps(str(value))}",
        )
    if not isinstance(value, str):
        return None  # missing or another type: the schema says so
    same = next((k for k in known if _version_tuple(k) == _version_tuple(value)), None)
    if value in known or same is not None:
        changed = known[value if value in known else str(same)]
        if changed is None:
            return None
        newest = max(known, key=lambda k: _version_tuple(k) or ())
        return Problem(
            WARNING,
            where,
            f"version {value} is older than {newest}: {changed}",
            f'update the fields named, then set "version": {json.dumps(newest)}',
        )
    mine = _version_tuple(value)
    if mine is None:
        return Problem(ERROR, where, f"{json.dumps(value)} is not a version", f"set one of {names}")
    newest_t = max(_version_tuple(k) or () for k in known)
    if mine > newest_t:
        return Problem(
            ERROR,
            where,
            f"version {value} is newer than this lorch, which reads {names}",
            "upgrade lorch (pip install -U lorch), or write the file for one of "
            f"{names} (docs/configuration.md)",
        )
    return Problem(
        ERROR,
        where,
        f"version {value} was never a lorch.json format (this lorch reads {names})",
        f"set one of {names}",
    )


# -- errors ---------------------------------------------------------------------


def _node(path: str) -> Any:
    """The schema node describing the field at a JSON path (``$.agents.builder.cmd[0]``)."""
    schema = schemas.load_schema("config")
    node: Any = schema
    for part in re.findall(r"\.([^.\[]+)|\[(\d+)\]", path):
        node = config._deref(schema, node)
        if not isinstance(node, dict):
            return None
        if part[0]:
            props = node.get("properties", {})
            extra = node.get("additionalProperties")
            node = props.get(part[0], extra if isinstance(extra, dict) else None)
        else:
            node = node.get("items")
    return config._deref(schema, node)


def expected(path: str) -> str:
    """What the schema allows at ``path``, in words (with its description)."""
    node = _node(path)
    if not isinstance(node, dict):
        return ""
    if "enum" in node:
        what = "one of " + ", ".join(json.dumps(v) for v in node["enum"])
    elif "oneOf" in node:
        what = " or ".join(_kind(n) for n in node["oneOf"])
    else:
        what = _kind(node)
    desc = node.get("description")
    return f"{what} ({desc})" if desc else what


def _kind(node: Any) -> str:
    if not isinstance(node, dict):
        return "a value"
    t = node.get("type")
    bounds = []
    if "minimum" in node:
        bounds.append(f">= {node['minimum']}")
    if "exclusiveMinimum" in node:
        bounds.append(f"> {node['exclusiveMinimum']}")
    tail = f" {' and '.join(bounds)}" if bounds else ""
    if t == "string":
        return "a non-empty string" if node.get("minLength") else "a string"
    if t == "integer":
        return f"a whole number{tail}"
    if t == "number":
        return f"a number{tail}"
    if t == "boolean":
        return "true or false"
    if t == "array":
        items = _kind(node.get("items"))
        least = node.get("minItems", 0)
        return f"a list of {items.removeprefix('a ')}s" + (f", at least {least}" if least else "")
    if t == "object":
        return "an object"
    return "a value"


def _schema_fix(where: str, what: str) -> str:
    unexpected = re.search(r"\('([^']+)' was unexpected\)", what)
    if unexpected:
        close = re.search(r"did you mean '([^']+)'\?", what)
        key = unexpected.group(1)
        if close:
            return f"rename {key!r} to {close.group(1)!r}"
        known_keys = config._known_keys(where)
        return f"remove {key!r}" + (f" (known here: {', '.join(known_keys)})" if known_keys else "")
    required = re.match(r"'([^']+)' is a required property", what)
    if required:
        field = f"{where}.{required.group(1)}"
        return f"add {field}: {expected(field)}"
    if "allowed only with" in what:
        field = where.rsplit(".", 1)[-1]
        owner = next((k.name for k in registry.TRANSPORTS.values() if field in k.options), None)
        if owner is not None:
            return f'set "transport": "{owner}" on this role, or remove the field'
    allowed = expected(where)
    if allowed.startswith(("a non-empty string", "a string")) and "is not of type 'string'" in what:
        return f"set {allowed}; quote it (lorch config set --string KEY VALUE)"
    return f"set {allowed}" if allowed else "see docs/configuration.md"


def _unsupported_fix(what: str) -> tuple[str, str]:
    """lorch.app.config's own refusals carry their fix in the text: split it off."""
    m = re.search(r" \((set [^)]*|remove [^)]*)\)$", what)
    if m:
        return what[: m.start()], m.group(1)
    m = re.search(r"; (set .*)$", what)
    if m:
        return what[: m.start()], m.group(1)
    m = re.match(r"given twice: (.*)$", what)
    if m:
        return "given twice", m.group(1)
    if what.endswith("is listed twice"):
        return what, "give each task its own id"
    if "(only orchestration can be disabled)" in what:
        return what, "remove it: this role is always enabled"
    return what, "see docs/configuration.md"


def errors(raw: Any, path: Path) -> list[Problem]:
    """Everything that stops lorch from loading ``raw`` as the lorch.json at ``path``."""
    out: list[Problem] = []
    version = version_problem(raw.get("version")) if isinstance(raw, dict) else None
    schema_found = {(w, config._suggest(m, w)) for w, m in schemas.errors("config", raw)}
    for where, what in config.problems(raw, path.parent):
        if where == "$.version" and version is not None:
            continue
        if (where, what) in schema_found:
            out.append(Problem(ERROR, where, what, _schema_fix(where, what)))
        else:
            message, fix = _unsupported_fix(what)
            out.append(Problem(ERROR, where, message, fix))
    if version is not None:
        out.insert(0, version)
    if out:
        return out
    try:
        config.parse(raw, path)
    except ConfigError as e:
        text = str(e).removeprefix(f"{path}: ")
        m = re.match(r"(\$[^:]*): (.*)$", text, re.S)
        where, what = (m.group(1), m.group(2)) if m else ("$", text)
        fix = (
            "write $$ for a dollar sign"
            if "'$'" in what
            else "use a known placeholder (docs/configuration.md, Prompts)"
            if "placeholder" in what
            else "see docs/configuration.md"
        )
        out.append(Problem(ERROR, where, what, fix))
    return out


# -- warnings -------------------------------------------------------------------


def _has(raw: Any, *keys: str) -> bool:
    for k in keys:
        if not isinstance(raw, dict) or k not in raw:
            return False
        raw = raw[k]
    return True


def warnings(cfg: Config) -> list[Problem]:
    """Settings that load but are probably not what the user meant."""
    out: list[Problem] = []
    raw = cfg.raw
    for role, a in sorted(cfg.agents.items()):
        base = f"$.agents.{role}"
        agent = known(a.cmd)
        if (
            agent is not None
            and agent.started_by(a.transport)
            and "*" not in a.pass_env
            and not set(agent.keys) & set(a.pass_env)
        ):
            wanted = [*a.pass_env, *[k for k in agent.pass_env if k not in a.pass_env]]
            out.append(
                Problem(
                    WARNING,
                    f"{base}.pass_env",
                    f"{agent.name} reads its key from {' or '.join(agent.keys)}, which "
                    f"pass_env does not list: only a login ({agent.login}) can authenticate it",
                    f"lorch config set agents.{role}.pass_env '{json.dumps(wanted)}'",
                )
            )
        if "*" in a.pass_env:
            out.append(
                Problem(
                    WARNING,
                    f"{base}.pass_env",
                    '"*" passes every variable of lorch\'s environment to the agent, the other '
                    "agents' keys included",
                    "list only the variables it needs",
                )
            )
        if a.sandbox == "none":
            out.append(
                Problem(
                    WARNING,
                    f"{base}.sandbox",
                    '"none": the agent runs unconfined and can read and change lorch\'s '
                    "ledger, state and key (docs/security.md)",
                    'remove it (default "auto": bubblewrap where it can run) or set "bwrap"',
                )
            )
        if a.fs and agent is not None and agent.exe == "gemini":
            out.append(
                Problem(
                    WARNING,
                    f"{base}.fs",
                    "Gemini CLI cannot create a file through lorch's file service, so it "
                    "never writes a new file or verdict (docs/real-agents.md)",
                    "remove it (default false)",
                )
            )
        for name in sorted(_get_dict(raw, "agents", role, "env")):
            if name.upper().endswith(SECRET_SUFFIXES):
                out.append(
                    Problem(
                        WARNING,
                        f"{base}.env.{name}",
                        "a secret written into lorch.json: whoever reads the file (or a "
                        "repository it is committed to) has it",
                        f"remove it, set {name} in lorch's environment and add it to "
                        f"{base}.pass_env",
                    )
                )
        if a.kind.heartbeats:
            out += _timeout_warnings(raw, role, a.heartbeat_interval_s, a.timeouts_s)
    builder = cfg.agents.get("builder")
    if builder is not None and builder.kind.runs_tests:
        listed = [("$.task", raw.get("task"))] if "task" in raw else []
        listed += [(f"$.tasks[{i}]", t) for i, t in enumerate(raw.get("tasks", []))]
        for where, task in listed:
            if isinstance(task, dict) and "test_cmd" not in task:
                out.append(
                    Problem(
                        WARNING,
                        f"{where}.test_cmd",
                        f"task {task['id']} has no test_cmd and the builder is an ACP agent: "
                        'every builder turn is recorded as tests "pass" ("no test command '
                        'configured")',
                        'set the command that runs its tests, e.g. ["python3", "-m", "pytest", '
                        '"-q"]',
                    )
                )
    if raw.get("policy", {}).get("fsync") is False:
        out.append(
            Problem(
                WARNING,
                "$.policy.fsync",
                "false: ledger records are not synced to disk, so after a power loss resume "
                "may find records missing and work done twice",
                "remove it (default true); false is for throwaway benchmarks",
            )
        )
    return out


def _get_dict(raw: Any, *keys: str) -> dict[str, Any]:
    for k in keys:
        raw = raw.get(k) if isinstance(raw, dict) else None
    return raw if isinstance(raw, dict) else {}


def _timeout_warnings(
    raw: Any, role: str, hb: float, timeouts: Mapping[str, float]
) -> list[Problem]:
    out = []
    for action, t in sorted(timeouts.items()):
        if action == "start" or t >= hb:
            continue
        if _has(raw, "agents", role, "timeouts_s", action):
            where = f"$.agents.{role}.timeouts_s.{action}"
        elif _has(raw, "policy", "timeouts_s", action):
            where = f"$.policy.timeouts_s.{action}"
        elif _has(raw, "agents", role, "heartbeat_interval_s"):
            where = f"$.agents.{role}.heartbeat_interval_s"
        else:
            where = "$.policy.heartbeat_interval_s"
        out.append(
            Problem(
                WARNING,
                where,
                f"{role}'s {action} times out after {t:g} s, before the first heartbeat "
                f"it is expected to send every {hb:g} s",
                f"raise the {action} timeout above {hb:g} s or lower the heartbeat interval",
            )
        )
    return out


def check(raw: Any, path: Path) -> tuple[list[Problem], Config | None]:
    """The errors of ``raw``; when there are none, its warnings and the parsed config."""
    found = errors(raw, path)
    if found:
        return found, None
    cfg = config.parse(raw, path)
    version = version_problem(raw.get("version"))
    return ([version] if version else []) + warnings(cfg), cfg


# -- the environment (lorch config check --verbose) -----------------------------


def environment(
    cfg: Config, workspace: Path, environ: Mapping[str, str]
) -> tuple[list[str], list[Problem]]:
    """What ``lorch doctor`` checks without starting an agent: (lines that hold, problems)."""
    from lorch.app.launch import find_executable, mockagent_script

    ok: list[str] = []
    out: list[Problem] = []
    for role, a in sorted(cfg.agents.items()):
        base = f"$.agents.{role}"
        cwd = workspace / a.cwd if a.cwd else workspace
        found = find_executable(a.cmd[0], cwd)
        if found is None:
            where = "not an executable file" if os.sep in a.cmd[0] else "not found on PATH"
            out.append(
                Problem(
                    ERROR,
                    f"{base}.cmd[0]",
                    f"{a.cmd[0]!r} is {where}",
                    "install it, or give its full path",
                )
            )
        else:
            ok.append(f"agent {role}: {found}")
        script = mockagent_script(a.cmd)
        if script is not None:
            if (cwd / script).is_file():
                ok.append(f"fixture {role}: {script}")
            else:
                out.append(
                    Problem(
                        ERROR,
                        f"{base}.cmd",
                        f"mockagent's fixture {script!r} does not exist (relative to {cwd})",
                        "give the path of a fixture file (docs/fixtures.md)",
                    )
                )
        if a.sandbox == "bwrap" and shutil.which("bwrap") is None:
            out.append(
                Problem(
                    ERROR,
                    f"{base}.sandbox",
                    '"bwrap" but bubblewrap is not installed',
                    'install bubblewrap, or set "auto"',
                )
            )
        out += _env_vars(role, a.cmd, a.pass_env, environ, ok)
    for i, task in enumerate(cfg.tasks):
        spec = task.get("spec_path")
        if isinstance(spec, str) and not (workspace / spec).is_file():
            where = "$.task" if "task" in cfg.raw and i == 0 else _task_path(cfg, i)
            out.append(
                Problem(
                    WARNING,
                    f"{where}.spec_path",
                    f"{spec} does not exist in the workspace",
                    "write the spec there, or fix the path",
                )
            )
    return ok, out


def _task_path(cfg: Config, i: int) -> str:
    return f"$.tasks[{i - 1 if 'task' in cfg.raw else i}]"


def _env_vars(
    role: str,
    cmd: list[str],
    pass_env: tuple[str, ...],
    environ: Mapping[str, str],
    ok: list[str],
) -> list[Problem]:
    out = []
    where = f"$.agents.{role}.pass_env"
    agent = known(cmd)
    optional = {*PROXY_VARS, *(agent.extra if agent else ())}
    keys = [k for k in (agent.keys if agent else ()) if k in pass_env]
    if keys:
        if any(environ.get(k) for k in keys):
            ok.append(f"key {role}: {', '.join(k for k in keys if environ.get(k))} set")
        else:
            assert agent is not None
            out.append(
                Problem(
                    WARNING,
                    where,
                    f"{keys[0]} is not set in lorch's environment"
                    if len(keys) == 1
                    else f"none of {', '.join(keys)} is set in lorch's environment",
                    f"export {keys[0]}=… before running lorch, or log in once ({agent.login})",
                )
            )
    for name in pass_env:
        if name == "*" or name in optional or name in keys or name in environ:
            continue
        out.append(
            Problem(
                WARNING,
                where,
                f"{name} is not set in lorch's environment: the agent will not get it",
                f"export {name}=… before running lorch, or remove it from pass_env",
            )
        )
    return out


def load_raw(path: Path) -> Any:
    """The document at ``path`` (ConfigError naming the file when it is not JSON)."""
    try:
        return config.read(path)
    except RecursionError:
        raise ConfigError(f"{path}: invalid JSON: nested too deeply") from None
