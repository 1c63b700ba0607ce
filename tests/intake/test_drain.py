"""While a prompt waits for the user, lorch keeps reading its agents' output."""

from __future__ import annotations

import json
import selectors
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.intake.conftest import decisions, the_ledger

pytestmark = pytest.mark.e2e

CHATTY = Path(__file__).parent.parent / "agents" / "chatty.py"


def read_until(proc: subprocess.Popen[bytes], text: bytes, deadline: float) -> bytes:
    assert proc.stdout is not None
    seen = b""
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while text not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"never printed {text!r}; printed {seen.decode()!r}"
            if sel.select(left):
                chunk = proc.stdout.read1(65536)  # type: ignore[attr-defined]
                assert chunk, f"lorch ended before printing {text!r}: {seen.decode()!r}"
                seen += chunk
    return seen


def test_an_agent_writing_far_more_than_a_pipe_holds_during_a_prompt_is_not_blocked(
    intake_ws: Callable[..., Path], lorch_bin: str, clean_env: dict[str, str]
) -> None:
    ws = intake_ws()
    go, done = ws / "go", ws / "done"
    config = json.loads((ws / "lorch.json").read_text())
    # The builder is started with the first intake command and sits idle
    # while lorch asks the clarification question.
    config["agents"]["builder"] = {
        "cmd": [sys.executable, str(CHATTY), "builder", str(go), str(done)]
    }
    (ws / "lorch.json").write_text(json.dumps(config))
    with subprocess.Popen(
        [lorch_bin, "run", "--workspace", str(ws), "--instruction", "Manage PLAN.md"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=clean_env,
    ) as proc:
        try:
            read_until(proc, b"lorch> Which greeting word", time.monotonic() + 60)
            go.touch()  # the builder starts talking only now, while the prompt waits
            deadline = time.monotonic() + 60
            while not done.exists():
                assert proc.poll() is None, "lorch ended while its prompt should be waiting"
                assert time.monotonic() < deadline, "the builder blocked: its stdout was not read"
                time.sleep(0.05)  # polling the condition, with a deadline
            assert proc.stdin is not None
            proc.stdin.close()  # end of input at the prompt: a decline
            rc = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
    assert rc == 1, err
    assert "declined by the user at the clarification prompt" in err
    assert [d["status"] for d in decisions(ws)][-1] == "declined"
    # Its stderr was read all along too, into its log.
    (log,) = (ws / "logs" / "builder").glob("run-*.ndjson")
    assert log.read_text().count("still here") > 1000
    # The heartbeats of an idle agent are read (one kept), not recorded as errors.
    assert not [r for r in the_ledger(ws) if r.get("event") == "system.protocol_error"]
