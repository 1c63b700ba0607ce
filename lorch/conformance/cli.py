"""``lorch conformance -- CMD ARGS…``."""

from __future__ import annotations

from pathlib import Path

import click

from lorch.agents import registry
from lorch.conformance import kit
from lorch.store.atomic import atomic_write_bytes


@click.command("conformance", context_settings={"ignore_unknown_options": True})
@click.option(
    "--role",
    type=click.Choice(["builder", "reviewer", "spec_maintainer", "orchestration"]),
    default="builder",
    show_default=True,
)
@click.option(
    "--workspace",
    type=click.Path(file_okay=False, path_type=Path),
    help="Workspace to use (default: a scratch directory).",
)
@click.option("--only", multiple=True, help="Run only this check (repeatable).")
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
    "--transcript",
    "transcript_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every byte exchanged here.",
)
@click.option(
    "--expected-failures",
    type=click.Path(dir_okay=False, path_type=Path),
    help="File listing check ids known to fail.",
)
@click.option(
    "--timeout", type=float, default=10.0, show_default=True, help="Seconds each wait may take."
)
@click.option(
    "--fuzz",
    "fuzz_examples",
    type=click.IntRange(min=0),
    default=0,
    help="Also run FUZZ-001 with this many generated commands.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the fuzzer.")
@click.option(
    "--checkpoints",
    is_flag=True,
    help="Run the battery under lorch's checkpoints, as lorch drives a role with "
    '"idempotency": "lorch": answered keys are not sent again, interrupted ones are '
    "rolled back first.",
)
@click.option(
    "--transport",
    type=click.Choice(registry.names()),
    default=registry.DEFAULT.name,
    show_default=True,
    help="acp: the idempotency battery for an Agent Client Protocol agent, bare and under "
    "lorch's checkpoints.",
)
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def conformance(
    role: str,
    workspace: Path | None,
    only: tuple[str, ...],
    json_path: Path | None,
    junit_path: Path | None,
    transcript_path: Path | None,
    expected_failures: Path | None,
    timeout: float,
    fuzz_examples: int,
    seed: int,
    checkpoints: bool,
    transport: str,
    command: tuple[str, ...],
) -> None:
    """Check that the agent started by COMMAND is protocol-correct and idempotent."""
    expected = kit.read_expected(expected_failures)
    if registry.capabilities(transport).checkpointed_turns:
        # Its agents see no keys: the battery checks them bare and under lorch's checkpoints.
        from lorch.conformance.acp_battery import run_acp_battery

        report = run_acp_battery(
            list(command),
            role=role,
            workspace=workspace,
            only=list(only) or None,
            timeout=max(timeout, 60.0),
        )
    else:
        report = kit.run_battery(
            list(command),
            role=role,
            workspace=workspace,
            only=list(only) or None,
            timeout=timeout,
            expected=expected,
            fuzz_examples=fuzz_examples,
            seed=seed,
            checkpoints=checkpoints,
        )
    click.echo(kit.table(report))
    click.echo(kit.summary(report))
    if json_path:
        kit.to_json(json_path, report)
    if junit_path:
        kit.to_junit(junit_path, report)
    if transcript_path:
        atomic_write_bytes(transcript_path, report.transcript.encode())
    if not report.passed:
        raise click.exceptions.Exit(1)
