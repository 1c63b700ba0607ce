"""The ``lorch`` command line.

``main`` is the one place where a :class:`LorchError` becomes a one-line
message on stderr and an exit status (0 success, 1 failed run or check,
2 usage or configuration error). Library code never prints or exits.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO, cast

import click

from lorch.store import layout
from lorch.wire.errors import LorchError


class ConsoleOut(io.TextIOBase):
    """The console for a run: it survives its reader going away (`lorch run | head -2`).

    On the first broken pipe it says so once on stderr and drops what follows;
    the run goes on and everything stays in the ledger and the transcript file.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self.gone = False

    def write(self, s: str) -> int:
        if not self.gone:
            try:
                self._stream.write(s)
            except BrokenPipeError:
                self._lost()
        return len(s)

    def flush(self) -> None:
        if not self.gone:
            try:
                self._stream.flush()
            except BrokenPipeError:
                self._lost()

    def isatty(self) -> bool:
        return self._stream.isatty()

    def _lost(self) -> None:
        self.gone = True
        # What is still buffered for fd 1 goes nowhere instead of failing at exit.
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
        sys.stderr.write(
            "lorch: the console's reader went away (broken pipe); the run goes on "
            "without it: `lorch status` shows its progress, transcripts/ its lines\n"
        )
        sys.stderr.flush()


def _console(verbose: bool) -> Any:
    from lorch.app.runner import Console

    return Console(verbose=verbose, out=cast(TextIO, ConsoleOut(sys.stdout)))


WORKSPACE = click.option(
    "--workspace",
    "-w",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Workspace directory.",
)
# Only `run` may create its workspace (the demo, docs/decisions.md D19): the
# other commands refuse one that does not exist rather than report it empty.
EXISTING_WORKSPACE = click.option(
    "--workspace",
    "-w",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Workspace directory (must exist).",
)


class LazyGroup(click.Group):
    """A group whose commands in ``lazy`` are imported only when one is used.

    ``lazy`` maps a command's name to its module, the command's attribute there
    and its one-line help, which ``--help`` shows without importing the module
    (a test holds each equal to the command's own).
    """

    def __init__(
        self, *args: Any, lazy: Mapping[str, tuple[str, str, str]] | None = None, **kw: Any
    ) -> None:
        super().__init__(*args, **kw)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self.lazy})

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in self.lazy and name not in self.commands:
            import importlib

            module, attr, _ = self.lazy[name]
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = []
        for name in self.list_commands(ctx):
            if name in self.lazy and name not in self.commands:
                rows.append((name, self.lazy[name][2]))
                continue
            command = self.get_command(ctx, name)
            if command is not None and not command.hidden:
                rows.append((name, command.get_short_help_str(formatter.width - 6 - len(name))))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


# The tools' commands (and lorch config): module, attribute, one-line help.
# The crash harness, the conformance kit and lorch config live in their own
# modules; `lorch run` and `lorch --help` import none of them.
TOOLS = {
    "crashtest": (
        "lorch.crashtest.cli",
        "crashtest",
        "Crash SCENARIO at every ledger offset in every mode, resume, check invariants.",
    ),
    "conformance": (
        "lorch.conformance.cli",
        "conformance",
        "Check that the agent started by COMMAND is protocol-correct and idempotent.",
    ),
    "config": (
        "lorch.app.configcli",
        "config_group",
        "Show, get, set, unset, check and edit lorch.json (docs/configuration.md).",
    ),
}


@click.group(
    cls=LazyGroup,
    lazy=TOOLS,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.version_option(package_name="lorch")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """lorch: run a task through implement → review → spec, resumable at any instant.

    `lorch` alone is `lorch run`.
    """
    if ctx.invoked_subcommand is None:
        ctx.invoke(run_cmd)


def _answers(f: Callable[..., None]) -> Callable[..., None]:
    """The flags that answer intake's prompts (docs/intake.md); run and resume share them."""
    for option in reversed(
        (
            click.option("--instruction", help="Answer to 'What should I do?' (intake)."),
            click.option("--plan", "plan", metavar="PATH", help="The plan to use (intake)."),
            click.option("--tasks", metavar="all|ID,ID", help="The tasks to run (intake)."),
            click.option("--yes", is_flag=True, help="Accept the proposal as it stands."),
            click.option(
                "--answer",
                "answers",
                multiple=True,
                help="Answer to a clarification question, in order (repeatable).",
            ),
        )
    ):
        f = option(f)
    return f


def _prompter(flags: dict[str, Any]) -> Any:
    from lorch.engine.asking import ConsolePrompter, Flags

    return ConsolePrompter(
        Flags(
            instruction=flags.get("instruction"),
            plan=flags.get("plan"),
            tasks=flags.get("tasks"),
            yes=bool(flags.get("yes")),
            answers=tuple(flags.get("answers") or ()),
        )
    )


@cli.command("run")
@WORKSPACE
@click.option("--task", "task_id", help="Task id (default: task.id in lorch.json; none: intake).")
@click.option("-v", "--verbose", is_flag=True, help="Also show the agents' stderr.")
@_answers
def run_cmd(
    workspace: Path = Path("."),
    task_id: str | None = None,
    verbose: bool = False,
    **flags: Any,
) -> None:
    """Start a run of a task (with no task anywhere: ask what to do)."""
    from lorch.app.firstrun import prepare
    from lorch.app.runner import run

    said = prepare(workspace.absolute())
    console = _console(verbose)
    if said is not None:
        console.say(said)
    with _reaping():
        outcome = run(workspace, task_id, console=console, prompter=_prompter(flags))
    _finish(outcome.status, outcome.reason)


@cli.command("resume")
@EXISTING_WORKSPACE
@click.option("--run", "run_id", help="Run id (default: the newest unfinished run).")
@click.option("-v", "--verbose", is_flag=True, help="Also show the agents' stderr.")
@click.option(
    "--accept-config-change",
    is_flag=True,
    help="Apply a change to lorch.json made since the run recorded it (any key of any "
    "role, the task or the limits); the change is recorded in the ledger.",
)
@_answers
def resume_cmd(
    workspace: Path,
    run_id: str | None,
    verbose: bool,
    accept_config_change: bool,
    **flags: Any,
) -> None:
    """Finish a crashed or interrupted run."""
    from lorch.app.runner import resume

    with _reaping():
        outcome = resume(
            workspace,
            run_id,
            console=_console(verbose),
            accept_config_change=accept_config_change,
            prompter=_prompter(flags),
        )
    _finish(outcome.status, outcome.reason)


@contextlib.contextmanager
def _reaping() -> Iterator[None]:
    """lorch adopts what its agents leave behind (a subreaper) and ends it when done.

    Whatever an agent starts ends with it, even out of its process group
    (``setsid``): lorch/agents/procs.py, ``end_strays``.
    """
    from lorch.agents import procs

    procs.become_subreaper()
    try:
        yield
    finally:
        procs.end_strays()


def _finish(status: str, reason: str) -> None:
    if status != "completed":
        raise click.exceptions.Exit(_fail(f"run {status}: {reason}" if reason else f"run {status}"))


def _fail(message: str, code: int = 1) -> int:
    _echo(f"lorch: {message}", err=True)
    return code


def _echo(text: str, *, err: bool = False) -> None:
    """Print a line that may quote an agent or a file of the workspace (which agents write).

    Nothing in it drives the terminal or starts a line of its own
    (:func:`lorch.engine.transcript.shown`).
    """
    from lorch.engine.transcript import shown

    click.echo(shown(text), err=err)


# What `lorch status --run` shows of intake: the decisions and where each task began.
INTAKE_RECORDS = ("system.discovery", "system.user_decision", "system.task_started")


@cli.command("status")
@EXISTING_WORKSPACE
@click.option("--run", "run_id", help="Show this run's command timeline.")
def status_cmd(workspace: Path, run_id: str | None) -> None:
    """List the runs in the workspace, or one run's timeline."""
    from lorch.core.state import State
    from lorch.engine import transcript
    from lorch.store import derived_files as store
    from lorch.store import ledger
    from lorch.wire.errors import UsageError

    if run_id is None:
        runs = store.read_index(workspace)["runs"]
        known = {r["run_id"] for r in runs}
        extra = sorted(p.stem for p in layout.runs(workspace))
        if not runs and not extra:
            _echo(f"no runs in {workspace}")
            return
        for r in runs:
            failure = f"  {r['failure']}" if r.get("failure") else ""
            _echo(f"{r['run_id']}  {r['task_id']}  {r['status']:<9}  {r['updated_at']}{failure}")
        for rid in extra:
            if rid not in known:
                _echo(f"{rid}  (not in the index; `lorch resume --run {rid}` rebuilds it)")
        return
    path = layout.ledger(workspace, run_id)
    if not path.exists():
        raise UsageError(f"{workspace}: no run {run_id}")
    state = State()
    for record in ledger.read(path):
        state.fold(record)
        if record["kind"] == "command":
            attempt = record["retry"]["attempt"]
            _echo(
                f"{record['correlation_id']:<16} {record['action']:<18} "
                f"round {record['inputs'].get('round', 1):<3} attempt {attempt + 1}  "
                f"{record['idempotency_key'][:19]}…"
            )
        elif record.get("event") in ("review.completed", "builder.completed") or str(
            record.get("event", "")
        ).startswith(("spec.", "error", "orchestration.")):
            _echo(f"{'':<16} → {record['event']} {record.get('status', '')}".rstrip())
        elif record.get("event") in (*INTAKE_RECORDS, "system.rewind"):
            shown = transcript.line(record)
            if shown is not None:
                _echo(shown[1])
    for i, task in enumerate(state.queue or []):
        if i < state.tasks_done:
            progress = "done"
        elif i == state.task_index:
            progress = state.status if state.finished else "running"
        else:
            progress = "not started"
        _echo(f"task {task.get('id')}: {progress}")
    _echo(f"status: {state.status}" + (f" ({state.failure})" if state.failure else ""))
    from lorch.app.rewind import status_lines

    for line in status_lines(workspace, run_id):
        _echo(line)


@cli.command("rewind")
@EXISTING_WORKSPACE
@click.option("--run", "run_id", help="The run (default: the latest).")
@click.option("--to", "step", metavar="STEP", help="The step (`lorch status --run ID` lists them).")
@click.option("--after", is_flag=True, help="To the checkpoint after the step's turn, not before.")
@click.option("--undo", is_flag=True, help="Restore the workspace as the last rewind found it.")
def rewind_cmd(
    workspace: Path, run_id: str | None, step: str | None, after: bool, undo: bool
) -> None:
    """Put the workspace back to before (or after) an agent's turn of a finished run."""
    from lorch.app import rewind
    from lorch.wire.errors import UsageError

    say = lambda text: _echo(text, err=True)  # noqa: E731
    if undo:
        if step is not None or after or run_id is not None:
            raise UsageError("lorch rewind --undo takes no --run, --to or --after")
        outcome = rewind.undo(workspace, say=say)
    else:
        if step is None:
            raise UsageError(
                "lorch rewind: give --to STEP (or --undo); `lorch status --run ID` lists the steps"
            )
        if run_id is None:
            run_id = latest_run(workspace)
            click.echo(f"run {run_id} (the latest)")
        outcome = rewind.rewind(workspace, run_id, step, after=after, say=say)
    for line in rewind.outcome_lines(outcome, workspace):
        _echo(line)


def latest_run(workspace: Path) -> str:
    """The run whose ledger was started last (ids sort by their start second)."""
    from lorch.wire.errors import UsageError

    run_id = layout.latest_run(workspace)
    if run_id is None:
        raise UsageError(f"{workspace}: no runs in this workspace")
    return run_id


@cli.command("verify")
@EXISTING_WORKSPACE
@click.option("--run", "run_id", help="Run id to verify (default: the latest run).")
def verify_cmd(workspace: Path, run_id: str | None) -> None:
    """Check a run against the run-validation rules."""
    from lorch.app.verify import verify

    if run_id is None:
        run_id = latest_run(workspace)
        click.echo(f"run {run_id} (the latest)")
    rules = verify(workspace, run_id)
    failed = 0
    for name, problems in rules.items():
        mark = "ok  " if not problems else "FAIL"
        click.echo(f"{mark} {name}")
        for p in problems:
            _echo(f"     {p}")
        failed += bool(problems)
    if failed:
        raise click.exceptions.Exit(_fail(f"run {run_id}: {failed} rule(s) failed"))
    click.echo(f"run {run_id}: all rules hold")


def _schema_for(path: Path, data: Any) -> str | None:
    if isinstance(data, dict) and data.get("kind") in ("command", "event", "heartbeat", "log"):
        return str(data["kind"])
    name = path.name
    if name == "lorch.json":
        return "config"
    if name == "run.json":
        return "run-state"
    if name == "index.json":
        return "index"
    if name.endswith(".manifest.json"):
        return "snapshot-manifest"
    if isinstance(data, dict) and (
        "responses" in data or "match" in data or path.parent.name == "fixtures"
    ):
        return "fixture"
    if name.startswith("step-") and path.parent.parent.name == "receipts":
        return "receipt"
    return None


def workspace_files(workspace: Path) -> list[Path]:
    """The files of a workspace that have a schema: lorch's own and the agents' fixtures."""
    found = [workspace / "lorch.json"] if (workspace / "lorch.json").is_file() else []
    for pattern in (
        "events/*.ndjson",
        "state/run.json",
        "state/index.json",
        "snapshots/*.manifest.json",
        "receipts/*/step-*.json",
        "fixtures/*.json",
    ):
        found += sorted(workspace.glob(pattern))
    return found


@cli.command("validate")
@EXISTING_WORKSPACE
@click.option(
    "--schemas",
    "files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="File to check (repeatable); NDJSON or JSON (default: the workspace's files).",
)
@click.argument("more", nargs=-1, type=click.Path(path_type=Path))
def validate_cmd(workspace: Path, files: tuple[Path, ...], more: tuple[Path, ...]) -> None:
    """Validate NDJSON or JSON files (lorch's, and mockagent fixtures) against the schemas.

    Relative paths are relative to --workspace; with no file, every file of the
    workspace that has a schema is checked.
    """
    paths = [workspace / p for p in (*files, *more)] or workspace_files(workspace)
    if not paths:
        raise click.exceptions.Exit(_fail(f"{workspace}: no file to validate", 2))
    bad = 0
    for path in paths:
        for problem in _file_problems(path):
            _echo(problem)
            bad += 1
    if bad:
        raise click.exceptions.Exit(_fail(f"{bad} problem(s) found"))
    click.echo(f"all valid ({len(paths)} file{'s' if len(paths) != 1 else ''})")


def _file_problems(path: Path) -> list[str]:
    """What ``lorch validate`` says about one file: one line per problem."""
    from lorch.wire import protocol

    try:
        raw = _read_regular(path)
    except OSError as e:
        return [f"{path}: cannot read: {e.strerror or e}"]
    if path.suffix == ".ndjson":
        from lorch.store.ledger import unchained

        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        out = []
        for n, line in enumerate(lines, 1):
            try:
                protocol.decode(unchained(line))  # a ledger line's chain is the ledger's framing
            except LorchError as e:
                out.append(f"{path}:{n}: {e}")
        return out
    try:
        data = json.loads(raw)
    except ValueError as e:
        return [f"{path}: invalid JSON: {e}"]
    except RecursionError:
        return [f"{path}: invalid JSON: nested too deeply"]
    name = _schema_for(path, data)
    if name is None:
        return [f"{path}: cannot tell which schema applies (not a known lorch file)"]
    return [
        f"{path}: {where + ': ' if where else ''}{what} (schema {name})"
        for where, what in _document_problems(path, name, data)
    ]


# What `lorch validate` reads of one file at most (a ledger of 100,000 records is ~34 MB).
VALIDATE_MAX_BYTES = 1 << 30


def _read_regular(path: Path) -> bytes:
    """The bytes of a regular file; a FIFO or device is refused unread (opened non-blocking)."""
    import stat

    from lorch.store import safefs

    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise safefs.NotRegular(str(path), mode)
        return safefs.read_fd(fd, VALIDATE_MAX_BYTES, str(path))
    finally:
        os.close(fd)


def _document_problems(path: Path, name: str, data: Any) -> list[tuple[str, str]]:
    from lorch.wire import schemas

    if name == "config":
        from lorch.app.config import problems

        return problems(data, path.parent.absolute())
    if name == "fixture":
        from mockagent.fixture import FixtureError
        from mockagent.fixture import validate as check_fixture

        try:
            check_fixture(data, path)
        except FixtureError as e:
            return [("", str(e).removeprefix(f"{path}: "))]
        return []
    return schemas.errors(name, data)


@cli.command("doctor")
@EXISTING_WORKSPACE
def doctor_cmd(workspace: Path) -> None:
    """Check Python, the agent commands, the workspace and fsync."""
    from lorch.app.doctor import checks

    failed = 0
    with _reaping():
        found = checks(workspace)
    for name, ok, detail in found:
        # The detail quotes the agent (its agentInfo, its errors): shown, not obeyed.
        _echo(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
        failed += not ok
    if failed:
        raise click.exceptions.Exit(_fail(f"{failed} check(s) failed"))


def main(argv: list[str] | None = None) -> int:
    """Console entry point: every LorchError becomes one line and its exit code."""
    try:
        rc = cli.main(args=argv, prog_name="lorch", standalone_mode=False)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except click.exceptions.Abort:
        click.echo("lorch: aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return 2
    except LorchError as e:
        return _fail(str(e), e.exit_code)
    except BrokenPipeError:
        return 1
    except OSError as e:
        # A disk error lorch did not word itself still gets one line, no traceback.
        where = f"{e.filename}: " if e.filename else ""
        return _fail(f"{where}{e.strerror or e}")
    return rc if isinstance(rc, int) else 0


if __name__ == "__main__":
    sys.exit(main())
