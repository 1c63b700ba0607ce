"""``lorch crashtest SCENARIO``."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from lorch.crashtest import report
from lorch.crashtest.harness import (
    DEFAULT_MODES,
    MODES,
    CrashtestInterrupted,
    Options,
    Result,
)
from lorch.crashtest.harness import (
    crashtest as run,
)
from lorch.wire.errors import UsageError


def parse_offsets(spec: str | None) -> list[int] | None:
    """``3``, ``1-5``, ``1,4,9-12``; None means every offset."""
    if not spec:
        return None
    out: list[int] = []
    for part in spec.split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise UsageError(f"--offsets {spec!r}: expected numbers and ranges like 1,4,9-12")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return out


class Progress:
    def __init__(self, stream: object = None) -> None:
        self.stream = sys.stderr
        self.tty = self.stream.isatty()

    def __call__(self, done: int, total: int, result: Result) -> None:
        if self.tty:
            width = 30
            filled = int(width * done / total)
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {done}/{total} {result.point.name:<14}")
            if done == total:
                self.stream.write("\n")
        elif done == total or done % 25 == 0:
            self.stream.write(f"{done}/{total} points\n")
        self.stream.flush()


@click.command("crashtest")
@click.argument("scenario")
@click.option(
    "--modes",
    default=",".join(DEFAULT_MODES),
    show_default=True,
    help=f"Comma-separated: {', '.join(MODES)}.",
)
@click.option("--offsets", default=None, help="Offsets to explore (e.g. 1,4,9-12); default: all.")
@click.option(
    "--jobs",
    "-j",
    type=click.IntRange(min=1),
    default=None,
    help="Parallel points (default: cores).",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a JSON report.",
)
@click.option(
    "--junit",
    "junit_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write a JUnit XML report.",
)
@click.option(
    "--keep-failed",
    type=click.Path(file_okay=False, path_type=Path),
    help="Keep failed points' workspaces here.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for the external killer."
)
@click.option(
    "--torn-bytes",
    type=click.Choice(["edges", "all"]),
    default="edges",
    show_default=True,
    help="powercut: tear a lost append at its first, middle and last byte, or at every byte.",
)
@click.option(
    "--cuts",
    type=click.Choice(["all", "lost"]),
    default="all",
    show_default=True,
    help="powercut: every crash state, or only those where every unsynced operation is lost.",
)
@click.option("--fail-fast", "-x", is_flag=True, help="Stop after the first failed point.")
@click.option(
    "--workspace",
    "-w",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder that relative SCENARIO and report paths are taken from.",
)
def crashtest(
    scenario: str,
    modes: str,
    offsets: str | None,
    jobs: int | None,
    json_path: Path | None,
    junit_path: Path | None,
    keep_failed: Path | None,
    seed: int,
    torn_bytes: str,
    cuts: str,
    fail_fast: bool,
    workspace: Path = Path("."),
) -> None:
    """Crash SCENARIO at every ledger offset in every mode, resume, check invariants.

    SCENARIO is a bundled scenario's name or a scenario folder (relative to --workspace).
    """
    if not Path(scenario).is_absolute() and (workspace / scenario).is_dir():
        scenario = str(workspace / scenario)
    json_path, junit_path, keep_failed = (
        workspace / p if p is not None else None for p in (json_path, junit_path, keep_failed)
    )
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    for m in mode_list:
        if m not in MODES:
            raise UsageError(f"unknown crash mode {m!r}; known: {', '.join(MODES)}")
    opts = Options(
        seed=seed,
        keep_failed=keep_failed,
        progress=Progress(),
        torn_bytes=torn_bytes,
        cuts=cuts,
        fail_fast=fail_fast,
    )
    if jobs is not None:
        opts.jobs = jobs
    if keep_failed is not None:
        keep_failed.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    partial = False
    try:
        baseline, results = run(scenario, mode_list, parse_offsets(offsets), opts)
    except CrashtestInterrupted as i:
        baseline, results, partial = i.baseline, i.results, True
    seconds = time.monotonic() - started
    click.echo(report.table(results))
    for r in results:
        if r.verdict == "fail":
            where = f" (workspace kept in {r.workspace})" if r.workspace else ""
            click.echo(f"reproduce: {report.reproduce(scenario, r)}{where}")
    click.echo(report.summary(results, seconds, partial=partial))
    if json_path:
        report.to_json(json_path, scenario, baseline, results, seconds)
    if junit_path:
        report.to_junit(junit_path, scenario, results, seconds)
    if partial:
        raise click.exceptions.Exit(130)
    if any(r.verdict == "fail" for r in results):
        raise click.exceptions.Exit(1)
