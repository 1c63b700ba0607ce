"""``lorch config``: show, get, set, unset, check and edit ``lorch.json`` from the command line.

Keys are dotted paths with list indexes, as lorch's messages name fields
(``agents.builder.cmd[0]``, ``policy.backoff.max_s``; a leading ``$.`` is
allowed). ``set`` and ``unset`` validate the whole resulting file the way a run
loads it (:mod:`lorch.app.configcheck`) and refuse a change that brings a new error,
with one line naming the field and the rule (exit 2); otherwise they keep a copy
of the previous file in ``state/backups/`` and replace lorch.json atomically,
keeping its key order and indentation. ``show`` and ``get`` mask secrets.
``check`` exits 0 when clean, 1 on warnings under ``--strict``, 2 on errors.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from lorch.app import config, configcheck
from lorch.app.cli import EXISTING_WORKSPACE, LazyGroup, _echo
from lorch.app.config import Config
from lorch.store import layout
from lorch.wire.errors import ConfigError, UsageError
from lorch.wire.redact import MASK, SECRET_SUFFIXES, Redactor, secret_values
from lorch.wire.vocabulary import DEFAULT_TIMEOUTS

BACKUPS = layout.BACKUPS

# -- keys -----------------------------------------------------------------------

Part = str | int
_TOKEN = re.compile(r"\.?([A-Za-z_][A-Za-z0-9_-]*)|\[(\d+)\]")


def parse_key(key: str) -> list[Part]:
    """``agents.builder.cmd[0]`` → ``["agents", "builder", "cmd", 0]``; UsageError if malformed."""
    text = key.removeprefix("$")
    parts: list[Part] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or (pos == 0 and text.startswith(".") and not key.startswith("$")):
            raise UsageError(
                f"{key!r} is not a key: write a dotted path with list indexes, "
                "e.g. agents.builder.cmd[0]"
            )
        if m.group(1) is not None and pos > 0 and not text.startswith(".", pos):
            raise UsageError(f"{key!r} is not a key: a '.' is missing before {m.group(1)!r}")
        parts.append(m.group(1) if m.group(1) is not None else int(m.group(2)))
        pos = m.end()
    if not parts or not isinstance(parts[0], str):
        raise UsageError(f"{key!r} is not a key: it must start with a field name")
    return parts


def key_text(parts: list[Part]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else p)
    return out


def json_path(parts: list[Part]) -> str:
    return "$." + key_text(parts)


_MISSING = object()


def get_in(doc: Any, parts: list[Part]) -> Any:
    """The value at ``parts`` in ``doc``, or ``_MISSING``."""
    for p in parts:
        if isinstance(p, int):
            if not isinstance(doc, list) or p >= len(doc):
                return _MISSING
        elif not isinstance(doc, dict) or p not in doc:
            return _MISSING
        doc = doc[p]
    return doc


def set_in(doc: Any, parts: list[Part], value: Any) -> None:
    """Set ``value`` at ``parts``, creating missing objects on the way; ``[len]`` appends."""
    for i, p in enumerate(parts):
        last = i == len(parts) - 1
        here = key_text(parts[:i]) or "the file"
        if isinstance(p, int):
            if not isinstance(doc, list):
                raise UsageError(f"{key_text(parts)}: {here} is not a list")
            if p > len(doc) or (p == len(doc) and not last):
                raise UsageError(
                    f"{key_text(parts)}: {here} has {len(doc)} item(s); index {p} is past its end"
                )
            if last:
                if p == len(doc):
                    doc.append(value)
                else:
                    doc[p] = value
                return
            doc = doc[p]
        else:
            if not isinstance(doc, dict):
                raise UsageError(f"{key_text(parts)}: {here} is not an object")
            if last:
                doc[p] = value
                return
            if p not in doc:
                doc[p] = [] if isinstance(parts[i + 1], int) else {}
            doc = doc[p]


def unset_in(doc: Any, parts: list[Part]) -> bool:
    """Remove the value at ``parts``; False when it was not there."""
    parent = get_in(doc, parts[:-1])
    last = parts[-1]
    if isinstance(last, int):
        if not isinstance(parent, list) or last >= len(parent):
            return False
        del parent[last]
        return True
    if not isinstance(parent, dict) or last not in parent:
        return False
    del parent[last]
    return True


def parse_value(text: str, as_string: bool) -> Any:
    """The value of ``set``: JSON where it parses, else the text itself."""
    if as_string:
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


# -- the effective configuration ------------------------------------------------


@dataclass(frozen=True)
class Row:
    key: str
    value: Any
    origin: str  # "file" or "default"
    source: str | None = None  # the field of the file it came from, when another one

    def as_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "origin": self.origin, "from": self.source}


def _leaves(doc: Any, prefix: list[Part]) -> Iterator[tuple[list[Part], Any]]:
    """Every value of ``doc`` that is not an object or a list of objects."""
    if isinstance(doc, dict) and doc:
        for k, v in doc.items():
            yield from _leaves(v, [*prefix, k])
    elif isinstance(doc, list) and doc and all(isinstance(x, dict) for x in doc):
        for i, v in enumerate(doc):
            yield from _leaves(v, [*prefix, i])
    else:
        yield prefix, doc


def effective(cfg: Config) -> list[Row]:
    """Every setting a run uses, with its origin: the file's own fields first as
    lorch reads them (:func:`lorch.app.config.parse`), then what defaults fill in."""
    from lorch.agents.acp.policy import DEFAULTS as PERMISSION_DEFAULTS
    from lorch.agents.acp.policy import KINDS
    from lorch.app.launch import start_timeout

    raw = cfg.raw
    rows: list[Row] = []

    def origin(key: str, value: Any, *sources: str) -> None:
        for src in sources:
            if get_in(raw, parse_key(src)) is not _MISSING:
                rows.append(Row(key, value, "file", None if src == key else "$." + src))
                return
        rows.append(Row(key, value, "default"))

    origin("version", raw["version"], "version")
    origin("workspace_root", raw.get("workspace_root", "."), "workspace_root")
    for i, t in enumerate(cfg.tasks):
        where = "task" if "task" in raw and i == 0 else f"tasks[{i - ('task' in raw)}]"
        k = f"{where}.expected_outputs"
        origin(k, t.get("expected_outputs", []), k)
    for role in raw["agents"]:
        a = cfg.agents.get(role)
        r = f"agents.{role}"
        if a is None:  # disabled: never started, nothing else of it applies
            origin(f"{r}.enabled", False, f"{r}.enabled")
            continue
        origin(f"{r}.enabled", True, f"{r}.enabled")
        origin(f"{r}.transport", a.transport, f"{r}.transport")
        origin(f"{r}.idempotency", a.idempotency, f"{r}.idempotency")
        origin(f"{r}.cwd", a.cwd or ".", f"{r}.cwd")
        origin(f"{r}.pass_env", list(a.pass_env), f"{r}.pass_env")
        origin(f"{r}.sandbox", a.sandbox, f"{r}.sandbox")
        origin(
            f"{r}.heartbeat_interval_s",
            a.heartbeat_interval_s,
            f"{r}.heartbeat_interval_s",
            "policy.heartbeat_interval_s",
        )
        for action, seconds in sorted(a.timeouts_s.items()):
            k = f"{r}.timeouts_s.{action}"
            origin(k, seconds, k, f"policy.timeouts_s.{action}")
        if "start" not in a.timeouts_s:
            k = f"{r}.timeouts_s.start"
            origin(k, start_timeout(a, cfg.policy.heartbeat_misses), k, "policy.timeouts_s.start")
        if "fs" in a.kind.options:
            origin(f"{r}.fs", bool(a.fs), f"{r}.fs")
            origin(f"{r}.test_timeout_s", a.test_timeout_s, f"{r}.test_timeout_s")
            origin(f"{r}.max_updates_per_turn", a.max_updates_per_turn, f"{r}.max_updates_per_turn")
            for kind in KINDS:
                k = f"{r}.permissions.{kind}"
                origin(k, a.permissions.get(kind, PERMISSION_DEFAULTS.get(kind, "deny")), k)
    p = cfg.policy
    for key, value, alt in (
        ("max_rounds", p.max_rounds, None),
        ("max_attempts", p.max_attempts, "retry.max_attempts"),
        ("max_restarts", p.max_restarts, None),
        ("heartbeat_misses", p.heartbeat_misses, None),
        ("backoff.initial_s", p.backoff_initial_s, "retry.backoff.initial_ms"),
        ("backoff.factor", p.backoff_factor, "retry.backoff.multiplier"),
        ("backoff.max_s", p.backoff_max_s, "retry.backoff.max_ms"),
        ("allowed_failures", p.allowed_failures, None),
        ("fsync", p.fsync, None),
        ("message_max_bytes", p.message_max_bytes, None),
        ("artifact_max_bytes", p.artifact_max_bytes, None),
    ):
        origin(f"policy.{key}", value, f"policy.{key}", *([f"policy.{alt}"] if alt else []))
    hb = raw.get("policy", {}).get("heartbeat_interval_s", 10.0)
    origin("policy.heartbeat_interval_s", hb, "policy.heartbeat_interval_s")
    for action, seconds in DEFAULT_TIMEOUTS.items():
        k = f"policy.timeouts_s.{action}"
        origin(k, raw.get("policy", {}).get("timeouts_s", {}).get(action, seconds), k)
    # The file's other fields as they are (cmd, env, prompts, the tasks, the
    # specification's spellings), each where no row above already reads it.
    covered = {row.key for row in rows} | {row.source[2:] for row in rows if row.source}
    for parts, value in _leaves(raw, []):
        k = key_text(parts)
        if k not in covered and not any(k.startswith(c + "[") for c in covered):
            rows.append(Row(k, value, "file"))
    # The file's order (its sections, roles and keys), then what defaults add.
    order = {k: i for i, k in enumerate(key_text(ps) for ps, _ in _leaves(raw, []))}
    top = ("version", "workspace_root", "task", "tasks", "agents", "policy")
    groups: dict[str, int] = {}
    for k in [*order, *(row.key for row in rows)]:
        groups.setdefault(_group(k), len(groups))

    def place(item: tuple[int, Row]) -> tuple[int, int, int, int]:
        n, row = item
        head = re.split(r"[.\[]", row.key, maxsplit=1)[0]
        section = top.index(head) if head in top else len(top)
        mine = row.source[2:] if row.source else row.key
        return (section, groups[_group(row.key)], mine not in order, order.get(mine, n))

    return [row for _, row in sorted(enumerate(rows), key=place)]


def _group(key: str) -> str:
    """The part of a key rows are grouped by: a role, a task, or the top-level field."""
    m = re.match(r"(agents\.[^.\[]+|tasks\[\d+\]|[^.\[]+)", key)
    return m.group(1) if m else key


# -- secrets --------------------------------------------------------------------

# Strings that look like a credential wherever they appear (vendors' key formats).
_KEY_SHAPES = re.compile(
    r"(sk-[A-Za-z0-9_-]{16,}|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_\w{20,}"
    r"|AIza[0-9A-Za-z_-]{30,}|xox[abprs]-[\w-]{10,}|glpat-[\w-]{16,}|AKIA[0-9A-Z]{16})"
)
# A whole env value made of one long token with letters and digits.
_OPAQUE = re.compile(r"(?=[^\s/]*[A-Za-z])(?=[^\s/]*\d)[A-Za-z0-9_+=.-]{32,}")


class Masker:
    """Masks what ``show`` and ``get`` print: secret-named ``env`` values, values
    of secret-named variables of lorch's environment and of any role's ``env``
    wherever they appear (:mod:`lorch.wire.redact`), and strings shaped like keys."""

    def __init__(self, raw: Any) -> None:
        agents = raw.get("agents") if isinstance(raw, dict) else None
        envs = [
            {k: v for k, v in spec["env"].items() if isinstance(v, str)}
            for spec in (agents.values() if isinstance(agents, dict) else ())
            if isinstance(spec, dict) and isinstance(spec.get("env"), dict)
        ]
        self._redactor = Redactor(secret_values(dict(os.environ), *envs))

    def text(self, s: str) -> str:
        """A line that may quote the file's values (a problem's message)."""
        return _KEY_SHAPES.sub(MASK, self._redactor.text(s))

    def value(self, key: str, value: Any) -> Any:
        m = re.fullmatch(r"agents\.[^.]+\.env(?:\.(.+))?", key)
        if m and m.group(1) is None and isinstance(value, dict):
            return {k: self.value(f"{key}.{k}", v) for k, v in value.items()}
        name = m.group(1) if m else None
        if (
            name is not None
            and isinstance(value, str)
            and (name.upper().endswith(SECRET_SUFFIXES) or _OPAQUE.fullmatch(value))
        ):
            return MASK
        if isinstance(value, str):
            return _KEY_SHAPES.sub(MASK, self._redactor.text(value))
        if isinstance(value, list):
            return [self.value(f"{key}[{i}]", v) for i, v in enumerate(value)]
        if isinstance(value, dict):
            return {k: self.value(f"{key}.{k}", v) for k, v in value.items()}
        return value


# -- writing --------------------------------------------------------------------


def indent_of(text: str) -> str | None:
    """The indentation unit of a JSON text: its first indented line's; None for one line."""
    m = re.search(r"\n([ \t]+)\S", text)
    if m is None:
        return None
    return m.group(1)


def render(doc: Any, like: str) -> bytes:
    """``doc`` as JSON, keys in their order, indented like the text ``like``."""
    indent = indent_of(like)
    out = json.dumps(doc, indent=indent, ensure_ascii=False)
    return (out + ("\n" if like.endswith("\n") or not like else "")).encode("utf-8")


def backup(workspace: Path, data: bytes) -> Path:
    """Keep ``data`` (the previous lorch.json) as ``state/backups/lorch.json.<UTC time>``."""
    from lorch.store.atomic import atomic_create_bytes

    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    folder = workspace / BACKUPS
    for n in range(1, 1000):
        name = f"{config.FILENAME}.{stamp}" + (f"-{n}" if n > 1 else "")
        if atomic_create_bytes(folder / name, data):
            return folder / name
    raise ConfigError(f"{folder}: cannot find a free name for a backup of {stamp}")


@contextlib.contextmanager
def _editing(workspace: Path) -> Iterator[None]:
    """One ``set`` or ``unset`` at a time: each reads the file the one before wrote
    (an ``flock`` on the backups folder, which dies with its holder)."""
    from lorch.store.atomic import open_dir

    fd = open_dir(workspace / BACKUPS)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _read(path: Path) -> tuple[bytes, str, Any]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no configuration file (run `lorch run` to create one)"
        ) from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return data, text, configcheck.load_raw(path)


def _write(workspace: Path, key: str, old: tuple[bytes, str, Any], new: Any) -> None:
    """Validate ``new`` against the file it replaces, back the old one up, write it."""
    from lorch.store.atomic import atomic_write_bytes

    path = workspace / config.FILENAME
    data, text, raw = old
    before = {(p.path, p.message) for p in configcheck.errors(raw, path)}
    after = configcheck.errors(new, path)
    fresh = [p for p in after if (p.path, p.message) not in before]
    if fresh:
        target = "$." + key.removeprefix("$.")
        first = next((p for p in fresh if p.path.startswith(target)), fresh[0])
        raise ConfigError(Masker(new).text(f"{path}: {first.line()}; nothing written"))
    kept = backup(workspace, data)
    atomic_write_bytes(path, render(new, text))
    _echo(f"{path}: {key} changed (previous file: {kept.relative_to(workspace)})")
    if after:
        _echo(f"lorch.json still has {len(after)} error(s): `lorch config check` lists them")
        return
    found, _ = configcheck.check(new, path)
    for p in found:
        _echo(f"warning: {p.line()}", err=True)
    _unfinished(workspace)


def _unfinished(workspace: Path) -> None:
    """Say so when a run of this workspace may still be resumed: it recorded the old file."""
    from lorch.store.derived_files import read_index

    for run in read_index(workspace)["runs"]:
        if run["status"] == "running":
            _echo(
                f"note: run {run['run_id']} has not finished and recorded the previous "
                f"lorch.json; `lorch resume --run {run['run_id']}` applies this change only "
                "with --accept-config-change",
                err=True,
            )


# -- the commands ---------------------------------------------------------------


# `config edit` lives in lorch/app/configedit.py, which uses this module's helpers.
COMMANDS = {
    "edit": (
        "lorch.app.configedit",
        "edit_cmd",
        "Edit lorch.json section by section, each answer checked; a diff before saving.",
    ),
}


@click.group(
    "config",
    cls=LazyGroup,
    lazy=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
def config_group() -> None:
    """Show, get, set, unset, check and edit lorch.json (docs/configuration.md)."""


def _loaded(workspace: Path) -> Config:
    path = workspace / config.FILENAME
    return config.parse(configcheck.load_raw(path), path)


@config_group.command("show")
@EXISTING_WORKSPACE
@click.option("--json", "as_json", is_flag=True, help="One JSON document, for machines.")
def show_cmd(workspace: Path, as_json: bool) -> None:
    """Every setting a run uses: the file's, and the defaults; secrets masked."""
    cfg = _loaded(workspace)
    masker = Masker(cfg.raw)
    rows = [Row(r.key, masker.value(r.key, r.value), r.origin, r.source) for r in effective(cfg)]
    if as_json:
        doc = {"file": str(cfg.path), "settings": [r.as_json() for r in rows]}
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
        return
    _echo(f"# {cfg.path}: origin, key = value (secrets shown as {MASK})")
    for r in rows:
        value = json.dumps(r.value, ensure_ascii=False)
        source = f"  (from {r.source})" if r.source else ""
        _echo(f"{r.origin:<8} {r.key} = {value}{source}")


@config_group.command("get")
@EXISTING_WORKSPACE
@click.argument("key")
@click.option("--json", "as_json", is_flag=True, help="Print the value as JSON, strings quoted.")
@click.option("--reveal", is_flag=True, help="Print secrets as they are in the file.")
def get_cmd(workspace: Path, key: str, as_json: bool, reveal: bool) -> None:
    """Print one value: the file's, else its default (exit 1 when neither).

    KEY is a dotted path with list indexes: agents.builder.cmd[0].
    """
    parts = parse_key(key)
    path = workspace / config.FILENAME
    raw = configcheck.load_raw(path)
    if configcheck._node(json_path(parts)) is None:
        raise UsageError(f"{path}: {key}: {_unknown(parts)}")
    value = get_in(raw, parts)
    if value is _MISSING:
        wanted = key_text(parts)
        rows = effective(config.parse(raw, path))
        value = next((r.value for r in rows if r.key == wanted), _MISSING)
        below = [r for r in rows if r.key.startswith((wanted + ".", wanted + "["))]
        if value is _MISSING and below:
            # A whole section the file leaves out (`get policy`): its defaults.
            value = {}
            for r in below:
                set_in(value, parse_key(r.key)[len(parts) :], r.value)
    if value is _MISSING:
        _echo(f"lorch: {path}: {key_text(parts)} is not set and has no default", err=True)
        raise click.exceptions.Exit(1)
    if not reveal:
        value = Masker(raw).value(key_text(parts), value)
    if isinstance(value, str) and not as_json:
        click.echo(value)
    else:
        click.echo(json.dumps(value, ensure_ascii=False))


def _unknown(parts: list[Part]) -> str:
    """Why a key names no field of lorch.json, with the closest known one."""
    import difflib

    for i in range(1, len(parts) + 1):
        if configcheck._node(json_path(parts[:i])) is None:
            parent = json_path(parts[: i - 1]) if i > 1 else "$"
            known = config._known_keys(parent) if isinstance(parts[i - 1], str) else []
            close = difflib.get_close_matches(str(parts[i - 1]), known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            listed = f" (known here: {', '.join(known)})" if known and not close else ""
            return f"no field {parts[i - 1]!r} here{hint}{listed}"
    return "not a field of lorch.json"


# A VALUE may begin with "-" (-1, --flag in a cmd): only set's own options are options.
@config_group.command("set", context_settings={"ignore_unknown_options": True})
@EXISTING_WORKSPACE
@click.argument("key")
@click.argument("value")
@click.option(
    "--string", "-s", "as_string", is_flag=True, help="Take VALUE as a string, never JSON."
)
def set_cmd(workspace: Path, key: str, value: str, as_string: bool) -> None:
    """Set KEY to VALUE (JSON where it parses, else a string), if the result is valid.

    The previous file is kept in state/backups/.
    """
    parts = parse_key(key)
    with _editing(workspace):
        old = _read(workspace / config.FILENAME)
        new = json.loads(json.dumps(old[2]))
        set_in(new, parts, parse_value(value, as_string))
        _write(workspace, key_text(parts), old, new)


@config_group.command("unset")
@EXISTING_WORKSPACE
@click.argument("key")
def unset_cmd(workspace: Path, key: str) -> None:
    """Remove KEY from lorch.json (its default applies again), if the result is valid."""
    parts = parse_key(key)
    path = workspace / config.FILENAME
    with _editing(workspace):
        old = _read(path)
        new = json.loads(json.dumps(old[2]))
        if not unset_in(new, parts):
            _echo(f"{path}: {key_text(parts)} is not set; nothing changed")
            return
        _write(workspace, key_text(parts), old, new)


@config_group.command("check")
@EXISTING_WORKSPACE
@click.option("--strict", is_flag=True, help="Warnings fail too (exit 1): for CI.")
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    help="Also check the environment, as lorch doctor does, without starting agents: "
    "commands on PATH, fixtures, keys set.",
)
@click.option("--json", "as_json", is_flag=True, help="The problems as one JSON document.")
def check_cmd(workspace: Path, strict: bool, verbose: bool, as_json: bool) -> None:
    """Check lorch.json: errors (exit 2) and warnings (exit 1 with --strict).

    Exit 0 when clean (or only warnings without --strict).
    """
    path = workspace / config.FILENAME
    raw = configcheck.load_raw(path)
    found, cfg = configcheck.check(raw, path)
    ok: list[str] = []
    if verbose and cfg is not None:
        ok, env = configcheck.environment(cfg, workspace.absolute(), os.environ)
        found += env
    masker = Masker(raw)
    found = [
        configcheck.Problem(p.level, p.path, masker.text(p.message), masker.text(p.fix))
        for p in found
    ]
    errors = sum(p.level == configcheck.ERROR for p in found)
    warnings = len(found) - errors
    code = 2 if errors else 1 if warnings and strict else 0
    if as_json:
        doc = {
            "file": str(path),
            "errors": errors,
            "warnings": warnings,
            "exit": code,
            "problems": [p.as_json() for p in found],
        }
        click.echo(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        for line in ok:
            _echo(f"ok       {line}")
        for p in found:
            _echo(f"{p.level:<8} {p.path}: {p.message}")
            _echo(f"{'':<8} fix: {p.fix}")
        summary = f"{errors} error(s), {warnings} warning(s)"
        _echo(f"{path}: {summary}" if found else f"{path}: valid, no warnings")
    if code:
        raise click.exceptions.Exit(code)
