"""The harness's warm lorch: forked runs behave like `python -m lorch` runs."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lorch.app.scenarios import materialize
from lorch.crashtest.forkserver import ForkServer
from lorch.crashtest.launcher import PROCS, Trail, lorch_argv, lorch_env
from lorch.wire.errors import LorchError


@pytest.fixture
def server() -> Iterator[ForkServer]:
    s = ForkServer()
    yield s
    s.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LORCH_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return {**env, **extra}


def test_forked_run_completes_and_reports_its_exit_code(server: ForkServer, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    materialize("happy-path", ws)
    pid = server.spawn(["run", "--workspace", str(ws)], _env())
    assert server.wait(pid, 60) == 0
    assert (ws / "state" / "run.json").exists()
    # A usage error is exit 2, as from the command line.
    pid = server.spawn(["resume", "--workspace", str(tmp_path / "nowhere")], _env())
    assert server.wait(pid, 60) == 2


def test_forked_run_sees_its_own_environment(server: ForkServer, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    materialize("happy-path", ws)
    pid = server.spawn(["run", "--workspace", str(ws)], _env(LORCH_CRASH_AT="after:3"))
    assert server.wait(pid, 60) == -signal.SIGKILL
    ledger = next((ws / "events").glob("run-*.ndjson"))
    assert len(ledger.read_text().splitlines()) == 3
    # The next child does not inherit the previous one's failpoint.
    pid = server.spawn(["resume", "--workspace", str(ws)], _env())
    assert server.wait(pid, 60) == 0


def test_wait_times_out_on_a_run_that_goes_on(server: ForkServer, tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    materialize("happy-path", ws)
    pid = server.spawn(["run", "--workspace", str(ws)], _env())
    os.kill(pid, signal.SIGSTOP)
    try:
        assert server.wait(pid, 0.2) is None
    finally:
        os.killpg(pid, signal.SIGKILL)
    assert server.wait(pid, 60) == -signal.SIGKILL


def test_a_server_that_cannot_start_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A broken install (here: a `lorch` package that fails to import) is named in one line.
    (tmp_path / "lorch").mkdir()
    (tmp_path / "lorch" / "__init__.py").write_text("raise ImportError('no module named acp')\n")
    monkeypatch.chdir(tmp_path)  # `python -c` imports from the working directory first
    s = ForkServer()
    try:
        with pytest.raises(LorchError, match=r"server stopped: ImportError: no module named acp"):
            s.spawn(["run"], _env())
    finally:
        s.close()


def test_a_trail_keeps_each_runs_stderr_and_says_how_the_last_ended(tmp_path: Path) -> None:
    """What a failed crash point reports: the last lorch run's verb, exit code
    and last stderr line (forked runs write their stderr to the trail's log)."""
    trail = Trail(tmp_path / "point.stderr")
    assert trail.last() == "no lorch run was started"
    ws = tmp_path / "ws"
    materialize("happy-path", ws)
    env = lorch_env({}, "after:3")
    assert PROCS.run([*lorch_argv(), "run", "--workspace", str(ws)], env, trail=trail) == -9
    assert trail.last() == "last lorch run, run (1 in all): killed by signal 9, nothing on stderr"
    nowhere = tmp_path / "nowhere"
    args = [*lorch_argv(), "resume", "--workspace", str(nowhere)]
    assert PROCS.run(args, lorch_env({}, None), trail=trail) == 2
    assert trail.last() == (
        "last lorch run, resume (2 in all): exit 2: Error: Invalid value for '--workspace' / "
        f"'-w': Directory '{nowhere}' does not exist."
    )
    # A run the harness made itself (its stderr captured) joins the trail too.
    trail.add("resume", 1, b"lorch: events/run-1.ndjson:3: not JSON\n")
    assert trail.last() == (
        "last lorch run, resume (3 in all): exit 1: lorch: events/run-1.ndjson:3: not JSON"
    )
