"""Asking the user: the one place intake talks to a person (or a script).

The workflow reducer only says *which* question comes next
(:class:`lorch.core.intake.Question`); a :class:`Prompter` gets an answer for it,
and :func:`decide` turns that into a :class:`~lorch.core.intake.Decision`, asking
again while the answer is not a valid one. Tests pass a fake prompter.

Where an answer comes from, in order:

1. a flag given to ``lorch run`` / ``lorch resume`` (``--instruction``,
   ``--plan``, ``--tasks``, ``--yes``, ``--answer``), used once per question;
2. otherwise one line read from stdin: on a terminal after showing the prompt
   ``lorch> …``, off a terminal the same way (so ``printf '…\\n' | lorch run``
   scripts a session). End of input is a decline.

While a prompt waits, the engine keeps reading its agents' output (``idle``:
it returns once stdin is readable), so an agent that talks while the user
thinks never blocks on a full pipe.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, TextIO

from lorch.core.intake import Decision, Question, interpret


@dataclass(frozen=True)
class Flags:
    """Answers given on the command line."""

    instruction: str | None = None
    plan: str | None = None
    tasks: str | None = None  # "all" or "ID,ID"
    yes: bool = False
    answers: tuple[str, ...] = ()  # clarification answers, in the order asked

    def answer(self, q: Question) -> str | None:
        if q.step == "instruction":
            return self.instruction
        if q.step == "clarification":
            return self.answers[q.ordinal] if q.ordinal < len(self.answers) else None
        if q.step in ("plan", "conflict"):
            if self.plan is not None:
                return self.plan
            # --yes accepts a proposal as it stands; a conflict is not one.
            return "1" if self.yes and q.step == "plan" else None
        if q.step == "tasks":
            if self.tasks is not None:
                return self.tasks
            return "all" if self.yes else None
        return None


# Waits until a file descriptor is readable, doing other work meanwhile.
Idle = Callable[[int], None]
# An answer line longer than this is cut there (a file with no newline is not a hang).
MAX_LINE = 1 << 20


class Prompter(Protocol):
    def ask(
        self, q: Question, *, again: bool = False, idle: Idle | None = None
    ) -> tuple[str | None, str]:
        """An answer to ``q`` (None at end of input) and where it came from."""
        ...

    def say(self, text: str) -> None: ...


@dataclass
class ConsolePrompter:
    """Flags first, then a line from stdin; prompts and menus go to ``out``."""

    flags: Flags = field(default_factory=Flags)
    stdin: TextIO = field(default_factory=lambda: sys.stdin)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    tty: bool | None = None
    _buffer: bytes = field(default=b"", repr=False)

    def __post_init__(self) -> None:
        if self.tty is None:
            try:
                self.tty = self.stdin.isatty()
            except (AttributeError, ValueError):
                self.tty = False

    def ask(
        self, q: Question, *, again: bool = False, idle: Idle | None = None
    ) -> tuple[str | None, str]:
        if not again:
            for line in q.shown:
                self.say(line)
        given = None if again else self.flags.answer(q)
        if given is not None:
            self.say(f"lorch> {q.prompt} {given}  (from the command line)")
            return given, "flag"
        self.out.write(f"lorch> {q.prompt} ")
        self.out.flush()
        line = self._readline(idle)
        if not line:
            self.out.write("\n")
            self.out.flush()
            return None, self._source
        text = line.rstrip("\n").rstrip("\r")
        if not self.tty:
            # Off a terminal the answer is not echoed: show it, so the output reads
            # like the session it was.
            self.out.write(text + "\n")
            self.out.flush()
        return text, self._source

    def _readline(self, idle: Idle | None) -> str:
        """One line of stdin ("" at its end); with ``idle``, waiting through it.

        With ``idle`` the bytes are read from the file descriptor (split only on
        ``\\n``, kept across prompts): a buffered text reader could hold the next
        line where waiting on the descriptor would not see it.
        """
        fd = _fileno(self.stdin) if idle is not None else None
        if idle is None or fd is None:
            return self.stdin.readline()
        while b"\n" not in self._buffer and len(self._buffer) < MAX_LINE:
            idle(fd)
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                break
            self._buffer += chunk
        cut = self._buffer.find(b"\n")
        end = cut + 1 if cut >= 0 else min(len(self._buffer), MAX_LINE)
        line, self._buffer = self._buffer[:end], self._buffer[end:]
        return line.decode("utf-8", errors="replace")

    @property
    def _source(self) -> str:
        return "tty" if self.tty else "stdin"

    def say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()


def _fileno(stream: TextIO) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, OSError, ValueError):
        return None  # not a file (a test's StringIO), or closed


def decide(prompter: Prompter, q: Question, *, idle: Idle | None = None) -> Decision:
    """Ask until the answer is valid (end of input is always valid: a decline)."""
    text, source = prompter.ask(q, idle=idle)
    while True:
        d = interpret(q, text, source)
        if isinstance(d, Decision):
            return d
        prompter.say(f"lorch: {d}")
        text, source = prompter.ask(q, again=True, idle=idle)
