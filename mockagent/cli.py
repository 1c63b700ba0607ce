"""Command line of mockagent (argparse: it starts fast, which tests need)."""

from __future__ import annotations

import argparse
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from mockagent.wire import AgentOptions

ROLES = ("builder", "reviewer", "spec_maintainer", "orchestration")


class _Formatter(argparse.HelpFormatter):
    """The default width without argparse's ``import shutil`` (slow to import)."""

    def __init__(self, prog: str) -> None:
        width = 0
        try:
            width = int(os.environ.get("COLUMNS", "0"))
            width = width or os.get_terminal_size(sys.stdout.fileno()).columns
        except (ValueError, OSError):
            pass
        super().__init__(prog, width=(width if width > 0 else 80) - 2)


_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _seconds(text: str) -> float:
    """Seconds from a number or a Go duration ("1.5s", "500ms", "1m30s")."""
    import re

    try:
        value = float(text)
    except ValueError:
        parts = re.findall(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)", text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise argparse.ArgumentTypeError(
                f"{text!r} is not a duration (seconds, or e.g. 500ms, 10s, 1m)"
            ) from None
        value = sum(float(n) * _UNITS[u] for n, u in parts)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than zero")
    return value


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mockagent",
        formatter_class=_Formatter,
        description=(
            "A scriptable mock agent for lorch. Also: mockagent validate FIXTURE; "
            "mockagent record --out FIXTURE -- CMD ARGS..."
        ),
    )
    # Each option also has the original Go mock agent's single-dash spelling
    # (`-type builder -script F`), so the original lorch.json files start it unchanged.
    p.add_argument("--script", "-script", help="fixture file (JSON)")
    p.add_argument("--type", "-type", dest="role", choices=ROLES, help="the agent's role")
    p.add_argument("--id", "-id", dest="agent_id", help="agent id (default: ROLE#1)")
    p.add_argument(
        "--heartbeat-interval",
        "-heartbeat-interval",
        type=_seconds,
        help="time between heartbeats: seconds, or a duration such as 500ms, 10s, 1m",
    )
    p.add_argument("--no-heartbeat", "-no-heartbeat", action="store_true", help="no heartbeats")
    p.add_argument("--workspace", help="workspace (default: $LORCH_WORKSPACE or cwd)")
    p.add_argument("--state-dir", help="state dir (journal and locks)")
    p.add_argument("--seed", type=int, default=0, help="seed for random delays and faults")
    p.add_argument(
        "--review-changes-count", "-review-changes-count", type=int, default=0, metavar="N"
    )
    p.add_argument("--spec-changes-count", "-spec-changes-count", type=int, default=0, metavar="N")
    p.add_argument(
        "--no-files", action="store_true", help="write no file (answers carry no artifacts)"
    )
    return p


def _fail(message: str) -> int:
    sys.stderr.write(f"mockagent: {message}\n")
    return 2


def main(argv: list[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["validate"]:
        return _validate(args_list[1:])
    if args_list[:1] == ["record"]:
        return _record(args_list[1:])
    args = _parser().parse_args(args_list)
    role = args.role or os.environ.get("LORCH_ROLE")
    if role not in ROLES:
        return _fail(f"no role: pass --type with one of {', '.join(ROLES)} (or set LORCH_ROLE)")
    fixture: dict[str, object] = {}
    fixture_dir = os.getcwd()
    if args.script is not None:
        from pathlib import Path

        from mockagent.fixture import FixtureError, load

        try:
            fixture = load(Path(args.script))
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
    from pathlib import Path

    from mockagent.fixture import FixtureError, load

    if len(rest) != 1:
        return _fail("usage: mockagent validate FIXTURE")
    try:
        load(Path(rest[0]))
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


def _options(
    args: argparse.Namespace, role: str, fixture: dict[str, object], fixture_dir: str
) -> AgentOptions:
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
