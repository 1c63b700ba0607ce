"""``lorch doctor``: can lorch work here?"""

from __future__ import annotations

import concurrent.futures
import os
import sys
import tempfile
from pathlib import Path

from lorch.config import Config
from lorch.errors import LorchError


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
    from lorch.config import load
    from lorch.launch import resolve_argv

    try:
        config = load(ws)
    except LorchError as e:
        out.append(("lorch.json", False, str(e)))
        return out
    out.append(("lorch.json", True, "valid"))
    probes: dict[str, concurrent.futures.Future[tuple[str, bool, str]]] = {}
    with concurrent.futures.ThreadPoolExecutor() as pool:
        for role, cfg in sorted(config.agents.items()):
            try:
                resolve_argv(role, cfg.cmd, ws / cfg.cwd if cfg.cwd else ws)
            except LorchError:
                continue
            if cfg.transport == "acp":  # started at once: agents take seconds to start
                probes[role] = pool.submit(_acp_probe, ws, config, role)
        for role, cfg in sorted(config.agents.items()):
            cwd = ws / cfg.cwd if cfg.cwd else ws
            try:
                argv = resolve_argv(role, cfg.cmd, cwd)
                out.append((f"agent {role}", True, argv[0]))
            except LorchError as e:
                out.append((f"agent {role}", False, str(e)))
                continue
            if role in probes:
                out.append(probes[role].result())
            script = mockagent_script(cfg.cmd)
            if script is not None:
                from mockagent.fixture import FixtureError
                from mockagent.fixture import load as load_fixture

                try:
                    load_fixture(cwd / script)
                    out.append((f"fixture {role}", True, script))
                except FixtureError as e:
                    out.append((f"fixture {role}", False, str(e)))
    return out


def mockagent_script(cmd: list[str]) -> str | None:
    """The fixture a mockagent command line names (`--script F`, `-script F`, `-script=F`)."""
    if not cmd or os.path.basename(cmd[0]) != "mockagent":
        return None
    for i, arg in enumerate(cmd[1:], 1):
        for flag in ("--script", "-script"):
            if arg == flag and i + 1 < len(cmd):
                return cmd[i + 1]
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1 :]
    return None


def _acp_probe(ws: Path, config: Config, role: str) -> tuple[str, bool, str]:
    """Start an ACP role and report its ``initialize`` answer, or the exact failure."""
    import dataclasses

    from lorch import acp
    from lorch.launch import ConfiguredAgents
    from lorch.redact import Redactor, secret_values

    redactor = Redactor(secret_values(dict(os.environ), config.agents[role].env))
    launch = ConfiguredAgents(ws, config, redactor).launch(role, 1, "doctor", None)
    with tempfile.TemporaryDirectory(prefix="lorch-doctor-") as tmp:
        launch = dataclasses.replace(launch, log_path=Path(tmp) / f"{role}.ndjson")
        try:
            text = acp.probe(launch, acp.AcpSettings(workspace=ws, init_timeout_s=30.0))
        except LorchError as e:
            return (f"acp {role}", False, str(e))
    return (f"acp {role}", True, text)
