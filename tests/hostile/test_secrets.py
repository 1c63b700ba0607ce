"""No secret survives, however an agent echoes it (issue 14, point 4): on stderr
before it dies (into the failure reason), JSON-escaped in an event, straddling
the cut of a protocol-error prefix, or past the line limit. Every file of the
workspace is then searched for it, and the console too."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import ENV_SECRET, SECRET, Workspace, assert_clean_exit, records

pytestmark = pytest.mark.e2e

RUNS = [
    {"builder": "stderr_secret", "reviewer": "straddle_secret"},
    {"builder": "escaped_secret", "spec_maintainer": "long_straddle_secret"},
    {"builder": "long_straddle_secret", "reviewer": "escaped_secret"},
    {"builder": "straddle_secret", "spec_maintainer": "stderr_secret"},
]


def leaks(root: Path, secret: str) -> list[str]:
    """Files under ``root`` holding the secret, or its first 8 characters.

    lorch.json is the user's own (where a role's secret is set), not lorch's.
    """
    found = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.name != "lorch.json":
            data = path.read_bytes()
            if secret.encode() in data or secret[:8].encode() in data:
                found.append(str(path.relative_to(root)))
    return found


@pytest.mark.parametrize("leak", ["role-env", "lorch-env"])
def test_secrets_echoed_every_way_reach_no_file_and_no_console(
    leak: str,
    hostile_ws: Workspace,
    lorch,  # type: ignore[no-untyped-def]
) -> None:
    secret = ENV_SECRET if leak == "role-env" else SECRET
    env = {} if leak == "role-env" else {"HOSTILE_SECRET": SECRET, "DEPLOY_PASSWORD": SECRET}
    for i, attacks in enumerate(RUNS):
        ws = hostile_ws(attacks, leak=leak, name=f"ws{i}")
        r = lorch("run", "--verbose", "--workspace", str(ws), env=env)
        assert_clean_exit(r)
        # The attacks happened, and were recorded (redacted).
        failed = [x for x in records(ws) if str(x.get("event")).startswith("system.")]
        assert any(x["event"] in ("system.protocol_error", "system.command_failed") for x in failed)
        if any(a == "stderr_secret" for a in attacks.values()):
            reasons = [
                x["payload"]["reason"] for x in failed if x["event"] == "system.command_failed"
            ]
            assert any("could not log in with ***" in r for r in reasons), reasons
        assert lorch("resume", "--workspace", str(ws), env=env).returncode == 0
        assert leaks(ws, secret) == []
        assert secret[:8] not in r.stdout + r.stderr
