"""Command line of mockagent: it starts fast, which every run and test pays for.

The usual command line is read without argparse (``quick_parse``); argparse
reads the rest, explains mistakes and prints the help.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    from mockagent.wire import AgentOptions

ROLES = ("builder", "reviewer", "spec_maintainer", "orchestration")

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(text: str) -> float:
    """Seconds from a number or a Go duration ("1.5s", "500ms", "1m30s"); ValueError if not."""
    import re

    try:
        value = float(text)
    except ValueError:
        parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(
                f"{text!r} is not a duration (seconds, or e.g. 500ms, 10s, 1m)"
            ) from None
        value = sum(float(n) * _UNITS[u] for n, u in parts)
    if value <= 0:
        raise ValueError(f"{text!r} must be more than zero")
    return value


# Every option: its spellings (each also has the original Go mock agent's
# single-dash one, `-type builder -script F`, so the original lorch.json files
# start it unchanged), its field in Args, how its value is read (None: a flag)
# and what argparse needs to explain it.
_OPTIONS: tuple[tuple[tuple[str, ...], str, Callable[[str], object] | None, dict[str, Any]], ...]
_OPTIONS = (
    (("--script", "-script"), "script", str, {"help": "fixture file (JSON)"}),
    (("--type", "-type"), "role", str, {"choices": ROLES, "help": "the agent's role"}),
    (("--id", "-id"), "agent_id", str, {"help": "agent id (default: ROLE#1)"}),
    (
        ("--heartbeat-interval", "-heartbeat-interval"),
        "heartbeat_interval",
        _seconds,
        {"help": "time between heartbeats: seconds, or a duration such as 500ms, 10s, 1m"},
    ),
    (("--no-heartbeat", "-no-heartbeat"), "no_heartbeat", None, {"help": "no heartbeats"}),
    (("--workspace",), "workspace", str, {"help": "workspace (default: $LORCH_WORKSPACE or cwd)"}),
    (("--state-dir",), "state_dir", str, {"help": "state dir (journal and locks)"}),
    (("--seed",), "seed", int, {"help": "seed for random delays and faults"}),
    (
        ("--review-changes-count", "-review-changes-count"),
        "review_changes_count",
        int,
        {"metavar": "N"},
    ),
    (("--spec-changes-count", "-spec-changes-count"), "spec_changes_count", int, {"metavar": "N"}),
    (
        ("--no-files",),
        "no_files",
        None,
        {"help": "write no file (answers carry no artifacts)"},
    ),
)


class Args:
    """The command line: argparse fills the same fields (these are its defaults)."""

    script: str | None = None
    role: str | None = None
    agent_id: str | None = None
    heartbeat_interval: float | None = None
    no_heartbeat: bool = False
    workspace: str | None = None
    state_dir: str | None = None
    seed: int = 0
    review_changes_count: int = 0
    spec_changes_count: int = 0
    no_files: bool = False


_BY_SPELLING = {spelling: opt for opt in _OPTIONS for spelling in opt[0]}


def quick_parse(argv: list[str]) -> Args | None:
    """``argv`` read without argparse, or None for anything argparse must judge.

    Importing argparse and building the parser costs a start ~3 ms of CPU, and
    lorch always passes exact spellings with plain values. This reads only those
    (``--opt value``, ``--opt=value``, flags, each option any number of times,
    the last one winning); help, abbreviations, a value that looks like an option,
    a value argparse would refuse, anything else: None, and argparse decides
    (a property test holds the two to the same answers).
    """
    args = Args()
    i = 0
    while i < len(argv):
        token = argv[i]
        opt = _BY_SPELLING.get(token)
        if opt is not None:
            if opt[2] is None:
                setattr(args, opt[1], True)
                i += 1
                continue
            if i + 1 == len(argv) or argv[i + 1].startswith("-"):
                return None
            value = argv[i + 1]
            i += 2
        else:
            spelling, eq, value = token.partition("=")
            opt = _BY_SPELLING.get(spelling)
            # argparse drops a value of "--" (`--id=--` gives []): left to it.
            if not eq or opt is None or opt[2] is None or value == "--":
                return None
            i += 1
        read, extra = opt[2], opt[3]
        try:
            parsed = read(value)
        except ValueError:
            return None
        if parsed not in extra.get("choices", (parsed,)):
            return None
        setattr(args, opt[1], parsed)
    return args


def _parser() -> argparse.ArgumentParser:
    import argparse

    class Formatter(argparse.HelpFormatter):
        """The default width without argparse's ``import shutil`` (slow to import)."""

        def __init__(self, prog: str) -> None:
            width = 0
            try:
                width = int(os.environ.get("COLUMNS", "0"))
                width = width or os.get_terminal_size(sys.stdout.fileno()).columns
            except (ValueError, OSError):
                pass
            super().__init__(prog, width=(width if width > 0 else 80) - 2)

    def duration(text: str) -> float:
        try:
            return _seconds(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    p = argparse.ArgumentParser(
        prog="mockagent",
        formatter_class=Formatter,
        description=(
            "A scriptable mock agent for lorch. Also: mockagent validate FIXTURE; "
            "mockagent record --out FIXTURE -- CMD ARGS..."
        ),
    )
    for spellings, dest, read, extra in _OPTIONS:
        if read is None:
            p.add_argument(*spellings, dest=dest, action="store_true", **extra)
        elif read is _seconds:
            p.add_argument(*spellings, dest=dest, type=duration, **extra)
        elif read is int:
            p.add_argument(*spellings, dest=dest, type=int, **extra)
        else:
            p.add_argument(*spellings, dest=dest, **extra)
    return p


def parse(argv: list[str]) -> Args:
    """The command line (argparse prints help or an error and exits for the rest)."""
    args = quick_parse(argv)
    if args is None:
        args = _parser().parse_args(argv, namespace=Args())
    return args


def _fail(message: str) -> int:
    sys.stderr.write(f"mockagent: {message}\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["validate"]:
        return _validate(args_list[1:])
    if args_list[:1] == ["record"]:
        return _record(args_list[1:])
    args = parse(args_list)
    role = args.role or os.environ.get("LORCH_ROLE")
    if role not in ROLES:
        return _fail(f"no role: pass --type with one of {', '.join(ROLES)} (or set LORCH_ROLE)")
    fixture: dict[str, object] = {}
    fixture_dir = os.getcwd()
    if args.script is not None:
        from mockagent.fixture import FixtureError, load, shown

        try:
            fixture = load(shown(args.script))
        except FixtureError as e:
            return _fail(str(e))
        fixture_dir = os.path.dirname(os.path.realpath(args.script))
    from mockagent.agent import serve

    try:
        return serve(_options(args, role, fixture, fixture_dir))
    except BrokenPipeError:
        return 0
    except KeyboardInterrupt:
        return 130


def _validate(rest: list[str]) -> int:
    from mockagent.fixture import FixtureError, load, shown

    if len(rest) != 1:
        return _fail("usage: mockagent validate FIXTURE")
    try:
        load(shown(rest[0]))
    except FixtureError as e:
        return _fail(str(e))
    print(f"{rest[0]}: ok")
    return 0


def _record(rest: list[str]) -> int:
    if len(rest) < 4 or rest[0] != "--out" or rest[2] != "--":
        return _fail("usage: mockagent record --out FIXTURE -- CMD ARGS...")
    from pathlib import Path

    from mockagent.record import record

    try:
        return record(Path(rest[1]), rest[3:])
    except OSError as e:
        return _fail(f"cannot run {rest[3]!r}: {e.strerror}")


def _options(args: Args, role: str, fixture: dict[str, object], fixture_dir: str) -> AgentOptions:
    """The agent's options: flags first, then lorch's environment, then defaults."""
    from mockagent.wire import AgentOptions

    workspace = os.path.realpath(args.workspace or os.environ.get("LORCH_WORKSPACE") or os.getcwd())
    state_dir = (
        args.state_dir
        or os.environ.get("MOCKAGENT_STATE_DIR")
        or os.path.join(workspace, ".mockagent", role)
    )
    interval = args.heartbeat_interval or float(os.environ.get("LORCH_HEARTBEAT_INTERVAL") or 10)
    expect = fixture.get("expect_snapshot") or os.environ.get("LORCH_SNAPSHOT_ID") or None
    return AgentOptions(
        role=role,
        agent_id=args.agent_id or os.environ.get("LORCH_AGENT_ID") or f"{role}#1",
        workspace=workspace,
        state_dir=state_dir,
        fixture=fixture,
        fixture_dir=fixture_dir,
        heartbeat_interval=interval,
        heartbeats=not args.no_heartbeat,
        seed=args.seed,
        review_changes=args.review_changes_count,
        spec_changes=args.spec_changes_count,
        expect_snapshot=str(expect) if expect else None,
        no_files=args.no_files,
    )


if __name__ == "__main__":
    raise SystemExit(main())
