"""``lorch config edit``: lorch.json section by section, at a prompt or from a script.

The editor walks a section's fields (task(s), agents, policy), each prompt
showing the field's value now (the file's, else its default). An answer is
validated with the whole file at once, the way ``lorch config set`` validates
(:mod:`lorch.app.configcheck`): an answer that brings an error is refused with one
line naming the field, the rule and the fix, and asked again; a new warning is
shown and the answer kept. A role can be given one of the agents in
:data:`PRESETS`, with the settings docs/real-agents.md gives it. Nothing is
written until the user saves: then a unified diff of the file, a y/N
confirmation, and the same locked, validated, atomic write with a backup as
``config set`` (:func:`lorch.app.configcli._write`).

Answers are lines of stdin, on a terminal or piped from a script (off a
terminal each answer is echoed after its prompt, so the output reads like the
session). Besides a value: Enter keeps the value, ``?`` explains the field
(from the schema's descriptions), ``-`` removes it (its default applies), ``.``
ends the section, ``q`` quits without saving; the end of input quits too.

Exit status: :data:`SAVED` (0) saved, or nothing to save; :data:`NOT_SAVED` (1)
quit, declined or input ended, lorch.json untouched; 2 lorch.json cannot be
read, or changed on disk during the edit (nothing written); 130 Ctrl-C.
"""

from __future__ import annotations

import contextlib
import copy
import difflib
import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import click

from lorch.agents.known_agents import CLAUDE, CODEX, GEMINI, KnownAgent
from lorch.app import config, configcheck
from lorch.app.cli import EXISTING_WORKSPACE
from lorch.app.configcli import (
    _MISSING,
    Masker,
    Part,
    _editing,
    _leaves,
    _read,
    _write,
    effective,
    get_in,
    json_path,
    key_text,
    parse_value,
    render,
    set_in,
    unset_in,
)
from lorch.app.firstrun import acp_role
from lorch.engine.transcript import shown
from lorch.wire.errors import ConfigError, UsageError
from lorch.wire.vocabulary import DEFAULT_TIMEOUTS, ROLES

SAVED = 0
NOT_SAVED = 1
# An answer line longer than this is cut there (a file with no newline is not a hang).
MAX_LINE = 1 << 20
TASK_FIELDS = ("id", "goal", "spec_path", "expected_outputs", "test_cmd")
ROLE_FIELDS = ("cmd", "transport", "pass_env", "env", "sandbox")
# A role's settings that mean the same for every agent: kept when a known agent
# replaces the rest of the role (its cmd, transport, keys and ACP-only fields).
NEUTRAL = ("enabled", "cwd", "sandbox", "heartbeat_interval_s", "timeouts_s")
POLICY_FIELDS = (
    "max_rounds",
    "max_attempts",
    "max_restarts",
    "heartbeat_interval_s",
    "heartbeat_misses",
    "backoff.initial_s",
    "backoff.factor",
    "backoff.max_s",
    *(f"timeouts_s.{a}" for a in ("start", *DEFAULT_TIMEOUTS)),
    "allowed_failures",
    "fsync",
    "message_max_bytes",
    "artifact_max_bytes",
)
# The specification's spelling of a policy field (MASTER-SPEC §8.2): when the
# file uses it, the editor asks for it instead of lorch's.
SPEC_SPELLING = {
    "max_attempts": "retry.max_attempts",
    "backoff.initial_s": "retry.backoff.initial_ms",
    "backoff.factor": "retry.backoff.multiplier",
    "backoff.max_s": "retry.backoff.max_ms",
}
HELP = (
    "Enter keeps a value, ? explains the field, - removes it (its default applies), "
    ". ends the section, q quits without saving"
)


# -- the agents a role can be given -----------------------------------------------


@dataclass(frozen=True)
class Preset:
    """A known agent: the role settings docs/real-agents.md gives it, and what to do next."""

    name: str
    block: Callable[[str], dict[str, Any]]  # the role's settings, by role
    note: str
    keys: tuple[str, ...] = ()  # the variables that carry its key (one is enough)

    def shown_cmd(self, role: str) -> str:
        return " ".join(self.block(role)["cmd"])


def _vendor(agent: KnownAgent, more: str = "") -> Preset:
    return Preset(
        agent.name,
        lambda role: acp_role(agent),
        f"{agent.name} reads its key from {' or '.join(agent.keys)}: set it in lorch's "
        f"environment (pass_env passes it on), or log in once ({agent.login}){more}",
        agent.keys,
    )


PRESETS = (
    Preset(
        "mockagent",
        lambda role: {"cmd": ["mockagent", "--type", role]},
        "mockagent is lorch's scripted agent: it answers every command without a model or a key",
    ),
    _vendor(CLAUDE, '; as root (containers, CI) it also needs "env": {"IS_SANDBOX": "1"}'),
    _vendor(CODEX),
    _vendor(GEMINI),
    Preset(
        "goose",
        lambda role: {
            "transport": "acp",
            "cmd": ["goose", "acp"],
            "pass_env": ["GOOSE_PROVIDER", "GOOSE_MODEL", "ANTHROPIC_API_KEY"],
        },
        "goose reads its provider and model from GOOSE_PROVIDER and GOOSE_MODEL and the "
        "provider's key (ANTHROPIC_API_KEY here): for another provider, put its key "
        "variable in pass_env instead",
        ("ANTHROPIC_API_KEY",),
    ),
    Preset(
        "OpenHands",
        lambda role: {
            "transport": "acp",
            "cmd": ["openhands", "acp", "--override-with-envs"],
            "pass_env": ["LLM_API_KEY", "LLM_MODEL", "LLM_BASE_URL"],
        },
        "OpenHands takes its model and key from LLM_MODEL and LLM_API_KEY (LLM_BASE_URL for a "
        "gateway); to use what the OpenHands CLI saved instead, drop --override-with-envs "
        "and run without lorch's sandbox, which hides your HOME",
        ("LLM_API_KEY",),
    ),
)


# -- answers ----------------------------------------------------------------------


class Quit(Exception):
    """The user quit (``q``) or the input ended: nothing is written."""


class EndSection(Exception):
    """``.``: the rest of the section is left as it is."""


REMOVE = object()


def parse_answer(path: str, text: str) -> Any:
    """The value an answer gives the field at ``path``; ValueError with why, when none.

    A string field takes the text as typed (a JSON string literal, ``"q"``, for
    one that reads like an answer); a list of strings takes shell-style words
    or a JSON list; anything else is JSON where it parses, else the text (which
    validation then refuses, naming what the field takes).
    """
    try:
        return _parse_answer(path, text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def _parse_answer(path: str, text: str) -> Any:
    node = configcheck._node(path)
    kinds = _kinds(node)
    if text.startswith('"') and "string" in kinds:
        try:
            value = json.loads(text)
        except ValueError as e:
            raise ValueError(f"{text} is not a JSON string: {e.args[0]}") from None
        return value
    if kinds == {"string"}:
        return text
    if "array" in kinds:
        if text.startswith("["):
            try:
                return json.loads(text)
            except ValueError as e:
                raise ValueError(f"{text} is not a JSON list: {e.args[0]}") from None
        if "string" in kinds:  # test_cmd: a command line for sh -c, or argv
            return text
        try:
            return shlex.split(text)
        except ValueError as e:
            raise ValueError(f"cannot split {text} into words: {e.args[0]}") from None
    return parse_value(text, as_string=False)


def _kinds(node: Any) -> set[str]:
    """The JSON types a schema node allows (``string`` for an enum of strings)."""
    if not isinstance(node, dict):
        return set()
    if "enum" in node:
        return {"string"} if all(isinstance(v, str) for v in node["enum"]) else set()
    if "oneOf" in node:
        return set().union(*(_kinds(n) for n in node["oneOf"]))
    t = node.get("type")
    return {t} if isinstance(t, str) else set()


def _how(path: str) -> str:
    kinds = _kinds(configcheck._node(path))
    if kinds == {"string"}:
        return 'the text as it is (in quotes, "q", for one that reads like an answer)'
    if kinds == {"array"}:
        return 'words separated by spaces, quoted as in a shell, or a JSON list: ["a", "b"]'
    if kinds == {"string", "array"}:
        return 'a command line for sh -c, or a JSON list of its words: ["make", "test"]'
    if kinds == {"object"}:
        return 'a JSON object: {"NAME": "value"}'
    return "JSON: a number, true or false"


@dataclass
class Lines:
    """Where answers come from and prompts go: stdin and stdout, terminal or not."""

    stdin: IO[bytes]
    out: IO[str]
    tty: bool

    def say(self, text: str) -> None:
        # A line may quote the file's values, which agents can write: shown, not obeyed.
        self.out.write(shown(text) + "\n")
        self.out.flush()

    def ask(self, prompt: str, mask: Callable[[str], str]) -> str:
        """One answer, stripped; Quit at ``q`` or the end of input."""
        self.out.write(shown(f"lorch> {prompt} "))
        self.out.flush()
        line = self.stdin.readline(MAX_LINE)
        if not line:
            self.out.write("\n")
            raise Quit("end of input")
        if len(line) == MAX_LINE and not line.endswith(b"\n"):
            # The rest of an overlong line is not the next answer: it is dropped.
            while (rest := self.stdin.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                pass
        text = line.decode("utf-8", errors="replace").rstrip("\n").rstrip("\r")
        if not self.tty:
            # Off a terminal the answer is not echoed: show it, so the output reads
            # like the session it was.
            self.out.write(shown(mask(text)) + "\n")
            self.out.flush()
        text = text.strip()
        if text == "q":
            raise Quit("q")
        return text


# -- the editor ---------------------------------------------------------------------


class Editor:
    """One editing session of the lorch.json at ``path``, read as ``data``."""

    def __init__(self, path: Path, data: bytes, text: str, raw: Any, io: Lines) -> None:
        self.path = path
        self.data = data
        self.text = text
        self.before = raw
        self.doc = copy.deepcopy(raw)
        self.io = io
        self._refresh()

    def _refresh(self) -> None:
        self.masker = Masker(self.doc)
        self.errors = configcheck.errors(self.doc, self.path)
        found, cfg = configcheck.check(self.doc, self.path) if not self.errors else ([], None)
        self.warnings = [p for p in found if p.level == configcheck.WARNING]
        self.defaults = (
            {r.key: r.value for r in effective(cfg) if r.origin == "default"} if cfg else {}
        )

    def say(self, text: str) -> None:
        self.io.say(text)

    def ask(self, prompt: str) -> str:
        return self.io.ask(prompt, self.masker.text)

    # -- the session --

    def run(self) -> bool:
        """The menu of sections, until saved (True) or not (False)."""
        self.say(f"lorch config edit: {self.path}")
        self.say(HELP)
        if not self.io.tty:
            self.say("(answers read from stdin, one per line; its end quits without saving)")
        for p in self.errors:
            self.say(f"error: {self.masker.text(p.line())}")
        menu = "Edit which section? t = task(s), a = agents, p = policy, s = save, q = quit:"
        sections = {"t": self.tasks, "a": self.agents, "p": self.policy}
        while True:
            answer = self.ask(menu).lower()
            if answer in sections:
                with contextlib.suppress(EndSection):
                    sections[answer]()
            elif answer == "s":
                return self.save()
            elif answer == "?":
                self.say(HELP)
                self.say(
                    "t: each task's id, goal, spec, outputs and test command, and new tasks; "
                    "a: each role's agent (a known one, or its command); p: the run's limits"
                )
            else:
                self.say("choose t, a, p, s or q")

    def save(self) -> bool:
        if self.doc == self.before:
            self.say(f"no changes: {config.FILENAME} unchanged")
            return True
        new = render(self.doc, self.text).decode("utf-8")
        for line in difflib.unified_diff(
            self.text.splitlines(),
            new.splitlines(),
            f"{config.FILENAME} (now)",
            f"{config.FILENAME} (edited)",
            lineterm="",
        ):
            self.say(Masker(self.before).text(self.masker.text(line)))
        answer = self.ask(f"Save these changes to {config.FILENAME}? [y/N]:").lower()
        if answer not in ("y", "yes"):
            self.say(f"not saved: {config.FILENAME} unchanged")
            return False
        workspace = self.path.parent
        with _editing(workspace):
            old = _read(self.path)
            if old[0] != self.data:
                raise ConfigError(
                    f"{self.path}: changed on disk while `lorch config edit` ran (another "
                    "edit, or `lorch config set`); nothing written: run the edit again"
                )
            _write(workspace, _changed(self.before, self.doc), old, self.doc)
        return True

    # -- one field --

    def current(self, parts: list[Part]) -> str:
        key = key_text(parts)
        value = get_in(self.doc, parts)
        if value is not _MISSING:
            return json.dumps(self.masker.value(key, value), ensure_ascii=False)
        if key in self.defaults:
            return "default " + json.dumps(self.defaults[key], ensure_ascii=False)
        return "not set"

    def field(self, parts: list[Part]) -> None:
        """Ask for one field until the answer is kept (or Enter keeps the value)."""
        path = json_path(parts)
        while True:
            answer = self.ask(f"{key_text(parts)} [{self.current(parts)}]:")
            if answer == "":
                return
            if answer == ".":
                raise EndSection
            if answer == "?":
                self.help(parts)
                continue
            if answer == "-":
                if get_in(self.doc, parts) is _MISSING:
                    return
                value: Any = REMOVE
            else:
                try:
                    value = parse_answer(path, answer)
                except ValueError as e:
                    self.say(f"lorch: {path}: {self.masker.text(str(e))}")
                    continue
            if self.change(parts, value):
                return

    def change(self, parts: list[Part], value: Any) -> bool:
        """Apply one answer if the file stays as valid as it was; say why not, or what to mind."""
        candidate = copy.deepcopy(self.doc)
        try:
            if value is REMOVE:
                unset_in(candidate, parts)
            else:
                set_in(candidate, parts, value)
        except UsageError as e:
            self.say(f"lorch: {e}")
            return False
        before = {(p.path, p.message) for p in self.errors}
        try:
            found = configcheck.errors(candidate, self.path)
        except RecursionError:
            self.say(f"lorch: {json_path(parts)}: nested too deeply")
            return False
        fresh = [p for p in found if (p.path, p.message) not in before]
        if fresh:
            target = json_path(parts)
            first = next((p for p in fresh if p.path.startswith(target)), fresh[0])
            self.say(f"lorch: {Masker(candidate).text(first.line())}")
            return False
        known = {(p.path, p.message) for p in self.warnings}
        self.doc = candidate
        self._refresh()
        for p in self.warnings:
            if (p.path, p.message) not in known:
                self.say(f"warning: {self.masker.text(p.line())}")
        return True

    def default(self, parts: list[Part]) -> Any:
        """The value the field has when the file leaves it out, or ``_MISSING``."""
        key = key_text(parts)
        if key in self.defaults:
            return self.defaults[key]
        candidate = copy.deepcopy(self.doc)
        if self.errors or not unset_in(candidate, parts):
            return _MISSING
        try:
            cfg = config.parse(candidate, self.path)
        except ConfigError:
            return _MISSING  # a required field
        rows = effective(cfg)
        return next((r.value for r in rows if r.key == key and r.origin == "default"), _MISSING)

    def help(self, parts: list[Part]) -> None:
        path = json_path(parts)
        what = configcheck.expected(path) or "see docs/configuration.md"
        self.say(f"{path}: {what}")
        default = self.default(parts)
        if default is not _MISSING:
            self.say(f"  default: {json.dumps(default, ensure_ascii=False)}")
        self.say(f"  answer: {_how(path)}")

    # -- the sections --

    def _tasks(self) -> Iterator[list[Part]]:
        if isinstance(self.doc.get("task"), dict):
            yield ["task"]
        listed = self.doc.get("tasks")
        for i in range(len(listed) if isinstance(listed, list) else 0):
            yield ["tasks", i]

    def tasks(self) -> None:
        for where in list(self._tasks()):
            task = get_in(self.doc, where)
            ident = task.get("id") if isinstance(task, dict) else None
            self.say(f"task {json.dumps(ident)} ({json_path(where)}):")
            for name in TASK_FIELDS:
                self.field([*where, name])
        while self.ask("Add a task? [y/N]:").lower() in ("y", "yes"):
            listed = self.doc.get("tasks")
            new: list[Part] = ["tasks", len(listed) if isinstance(listed, list) else 0]
            while True:
                answer = self.ask(f"{key_text([*new, 'id'])} (Enter: no new task):")
                if answer in ("", "."):
                    break
                if answer == "?":
                    self.help([*new, "id"])
                    continue
                if self.change(new, {"id": answer}):
                    for name in TASK_FIELDS[1:]:
                        self.field([*new, name])
                    break

    def agents(self) -> None:
        while True:
            for role in ROLES:
                self.say(f"  {role}: {self._summary(role)}")
            answer = self.ask(f"Which role? {', '.join(ROLES)} (Enter: back to the sections):")
            if answer in ("", "."):
                return
            if answer == "?":
                self.say(
                    "builder, reviewer and spec_maintainer are required; orchestration (intake's "
                    "planner, docs/intake.md) is optional"
                )
                continue
            if answer not in ROLES:
                self.say(f"lorch: no role {answer!r}: choose one of {', '.join(ROLES)}")
                continue
            with contextlib.suppress(EndSection):
                self.role(answer)

    def _summary(self, role: str) -> str:
        spec = get_in(self.doc, ["agents", role])
        if not isinstance(spec, dict):
            return "not set"
        cmd = spec.get("cmd")
        shown_cmd = shlex.join(cmd) if isinstance(cmd, list) else json.dumps(cmd)
        off = ", disabled" if spec.get("enabled") is False else ""
        return f"{self.masker.text(shown_cmd)} ({spec.get('transport', 'ndjson')}{off})"

    def role(self, role: str) -> None:
        self.say(
            "Known agents: "
            + ", ".join(f"{n}. {p.name} ({p.shown_cmd(role)})" for n, p in enumerate(PRESETS, 1))
        )
        base: list[Part] = ["agents", role]
        exists = isinstance(get_in(self.doc, base), dict)
        keep = "Enter keeps its agent" if exists else "Enter leaves it out"
        while True:
            answer = self.ask(f"agents.{role}: a known agent, 1-{len(PRESETS)} ({keep}):")
            if answer == ".":
                raise EndSection
            if answer == "":
                break
            if answer == "?":
                for n, p in enumerate(PRESETS, 1):
                    self.say(f"  {n}. {p.name}: {json.dumps(p.block(role), ensure_ascii=False)}")
                self.say("  (docs/real-agents.md; the role's cwd, sandbox and timeouts are kept)")
                continue
            n = int(answer) if answer.isdigit() else 0
            preset = PRESETS[n - 1] if 0 < n <= len(PRESETS) else None
            if preset is None:
                self.say(f"lorch: {answer!r} is not a known agent: answer 1-{len(PRESETS)}")
                continue
            old = get_in(self.doc, base)
            block = {k: v for k, v in old.items() if k in NEUTRAL} if exists else {}
            if self.change(base, {**preset.block(role), **block}):
                self.say(preset.note)
                if preset.keys and not any(os.environ.get(k) for k in preset.keys):
                    keys = preset.keys
                    which = (
                        f"{keys[0]} is not" if len(keys) == 1 else f"none of {', '.join(keys)} is"
                    )
                    self.say(f"note: {which} set in lorch's environment now")
                exists = True
                break
        if not exists:
            return
        for name in (*ROLE_FIELDS, *(("enabled",) if role == "orchestration" else ())):
            self.field([*base, name])

    def policy(self) -> None:
        present = get_in(self.doc, ["policy"])
        present = present if isinstance(present, dict) else {}
        keys: list[str] = []
        for name in POLICY_FIELDS:
            spec = SPEC_SPELLING.get(name)
            if spec is not None and get_in(present, [*spec.split(".")]) is not _MISSING:
                name = spec
            keys.append(name)
        # The file's other policy fields (the specification's), in its order.
        for parts, _ in _leaves(present, []):
            name = key_text(parts)
            if parts and name not in keys and not name.startswith(("timeouts_s", "backoff")):
                keys.append(name)
        for name in keys:
            self.field(["policy", *name.split(".")])


def _changed(before: Any, after: Any) -> str:
    """The keys an edit changed, for the line that says it was written."""
    old = {key_text(p): v for p, v in _leaves(before, [])}
    new = {key_text(p): v for p, v in _leaves(after, [])}
    keys = [
        k
        for k in [*old, *(k for k in new if k not in old)]
        if old.get(k, _MISSING) != new.get(k, _MISSING)
    ]
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


def edit(workspace: Path) -> int:
    """``lorch config edit`` in ``workspace``: the exit status (see the module docstring)."""
    path = workspace / config.FILENAME
    data, text, raw = _read(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: not a JSON object: fix it by hand, then edit it here")
    io = Lines(sys.stdin.buffer, sys.stdout, _isatty())
    editor = Editor(path, data, text, raw, io)
    try:
        return SAVED if editor.run() else NOT_SAVED
    except Quit as e:
        why = "end of input" if str(e) == "end of input" else "quit"
        io.say(f"{why}: nothing written, {config.FILENAME} unchanged")
        return NOT_SAVED


def _isatty() -> bool:
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


@click.command("edit")
@EXISTING_WORKSPACE
def edit_cmd(workspace: Path) -> None:
    """Edit lorch.json section by section, each answer checked; a diff before saving.

    Answers come from the terminal or, piped, one per line. Exit 0 saved (or
    nothing to save), 1 quit without saving (docs/configuration.md).
    """
    code = edit(workspace)
    if code:
        raise click.exceptions.Exit(code)
