"""``lorch doctor``: can lorch work here?"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path

from lorch.agents.transport import AgentPort, Transport
from lorch.app.config import Config
from lorch.wire.errors import LorchError


def checks(workspace: Path) -> list[tuple[str, bool, str]]:
    out: list[tuple[str, bool, str]] = []
    v = sys.version_info
    out.append(("python", v >= (3, 11), f"{v.major}.{v.minor}.{v.micro} (need 3.11+)"))
    ws = workspace.resolve()
    writable = ws.is_dir() and os.access(ws, os.W_OK)
    out.append(("workspace writable", writable, str(ws)))
    if writable:
        try:
            fd, name = tempfile.mkstemp(dir=ws, prefix=".lorch-doctor-")
            try:
                os.write(fd, b"x")
                os.fsync(fd)
                out.append(("fsync", True, "works on the workspace's file system"))
            finally:
                os.close(fd)
                os.unlink(name)
        except OSError as e:
            out.append(("fsync", False, str(e)))
    if not (ws / "lorch.json").exists():
        out.append(("lorch.json", True, "none yet; `lorch run` creates one wired to mockagent"))
        return out
    from lorch.app.config import load

    try:
        config = load(ws)
    except LorchError as e:
        out.append(("lorch.json", False, str(e)))
        return out
    out.append(("lorch.json", True, "valid"))
    out += agent_checks(ws, config)
    return out


def agent_checks(ws: Path, config: Config) -> list[tuple[str, bool, str]]:
    """Each role's command and fixture, then the same start-up check as a run's.

    The roles that pass the first two are started together and checked with
    the engine's own :func:`lorch.agents.transport.await_ready` (NDJSON: the first
    heartbeat; ACP: the ``initialize`` answer, then a session opened), so a
    role that doctor passes is one a run can start.
    """
    from lorch.agents.transport import Inbox, await_ready
    from lorch.app.launch import ConfiguredAgents
    from lorch.wire.redact import Redactor, secret_values

    out: dict[str, list[tuple[str, bool, str]]] = {}
    redactor = Redactor(secret_values(dict(os.environ), *(a.env for a in config.agents.values())))
    with tempfile.TemporaryDirectory(prefix="lorch-doctor-") as logs:
        agents = ConfiguredAgents(ws, config, redactor, log_dir=Path(logs))
        startable = []
        for role in sorted(config.agents):
            lines = out.setdefault(role, [])
            try:
                lines.append((f"agent {role}", True, agents.argv(role)[0]))
                script = agents.fixture(role)
                if script is not None:
                    lines.append((f"fixture {role}", True, script))
            except LorchError as e:
                what = "fixture" if lines else "agent"  # the command resolved: its fixture
                lines.append((f"{what} {role}", False, str(e)))
                continue
            # What contains the role's processes (docs/security.md); "bwrap" where
            # bubblewrap cannot run fails here, as it stops a run.
            try:
                lines.append((f"sandbox {role}", True, agents.sandbox_line(role)))
                startable.append(role)
            except LorchError as e:
                lines.append((f"sandbox {role}", False, str(e)))
        inbox = Inbox()
        ports: list[AgentPort] = []
        try:
            for role in startable:
                try:
                    ports.append(agents.start(role, 1, "doctor", None, inbox))
                except LorchError as e:
                    out[role].append((f"start {role}", False, str(e)))
            unready = {u.role: u.reason for u in await_ready(inbox, ports)[0]}
            for port in ports:
                out[port.role].append(_started(agents.transport(port.role), port, unready))
        finally:
            for port in ports:
                port.close_input()
            for port in ports:
                with contextlib.suppress(LorchError, OSError):
                    port.stop(grace=1.0)
            inbox.close()
    return [line for role in sorted(out) for line in out[role]]


def _started(
    transport: Transport, port: AgentPort, unready: dict[str, str]
) -> tuple[str, bool, str]:
    """The start-up line: the transport's own check of a port that passed the engine's."""
    name = f"{transport.capabilities.check} {port.role}"
    failure = unready.get(port.role)
    if failure is not None:
        return (name, False, failure)
    try:
        return (name, True, transport.check(port))
    except LorchError as e:
        return (name, False, str(e))
