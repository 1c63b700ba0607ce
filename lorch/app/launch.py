"""How an agent is launched: its argv resolved, its environment built.

One place for runner, doctor, conformance, the crash harness and the pytest
plugin, so an agent starts the same way under each of them. The running
Python's scripts directory goes first on PATH (docs/decisions.md D3), so
``mockagent`` and ``lorch`` from this installation are found before any other.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

from lorch.agents import registry, sandbox
from lorch.agents.ndjson import NdjsonTransport
from lorch.agents.transport import AgentPort, Inbox, Launch, Transport, unsandboxed
from lorch.app.config import AgentConfig, Config
from lorch.engine.timing import START_GRACE_S
from lorch.store import failpoint, faults, layout
from lorch.wire.errors import ConfigError
from lorch.wire.redact import Redactor

# Set only for lorch itself: an agent must never inherit a crash or a planted bug.
PRIVATE_VARS = (failpoint.ENV, faults.PLANT_ENV)


def scripts_dir() -> str:
    return os.path.dirname(sys.executable)


def path_with_scripts(path: str | None = None) -> str:
    """``path`` (default: this process's PATH) with the scripts directory first."""
    rest = os.environ.get("PATH", "") if path is None else path
    return f"{scripts_dir()}{os.pathsep}{rest}"


def with_scripts_path(env: Mapping[str, str]) -> dict[str, str]:
    """A copy of ``env`` whose PATH starts with the scripts directory."""
    return {**env, "PATH": path_with_scripts(env.get("PATH", ""))}


def find_executable(exe: str, cwd: Path) -> str | None:
    """The full path of ``exe``: relative to ``cwd`` if it has a slash, else on PATH."""
    if os.sep in exe:
        full = exe if os.path.isabs(exe) else str(cwd / exe)
        return full if os.access(full, os.X_OK) else None
    return shutil.which(exe, path=path_with_scripts())


def resolve_argv(role: str, cmd: list[str], cwd: Path) -> list[str]:
    """``cmd`` with its program resolved, or a ConfigError naming the field at fault."""
    exe = cmd[0]
    found = find_executable(exe, cwd)
    if found is None:
        if os.sep in exe:
            raise ConfigError(f"lorch.json: $.agents.{role}.cmd: {exe!r} is not an executable file")
        raise ConfigError(f"lorch.json: $.agents.{role}.cmd: command {exe!r} not found on PATH")
    return [found, *cmd[1:]]


def mockagent_script(cmd: list[str]) -> str | None:
    """The fixture a mockagent command line names (`--script F`, `-script F`, `-script=F`)."""
    return _mockagent_option(cmd, "script")


def mockagent_heartbeats(cmd: list[str]) -> bool:
    """False when the command line starts mockagent without heartbeats (`-no-heartbeat`)."""
    return _mockagent_option(cmd, "no-heartbeat") is None


def _mockagent_option(cmd: list[str], name: str) -> str | None:
    """A mockagent option's value ("" for a flag), or None when absent or not mockagent."""
    if not cmd or os.path.basename(cmd[0]) != "mockagent":
        return None
    for i, arg in enumerate(cmd[1:], 1):
        for flag in (f"--{name}", f"-{name}"):
            if arg == flag:
                if name != "script":
                    return ""
                return cmd[i + 1] if i + 1 < len(cmd) else None
            if arg.startswith(flag + "="):
                return arg[len(flag) + 1 :]
    return None


# What an agent inherits from lorch's environment besides its ``pass_env``
# (NDJSON and ACP alike; docs/security.md): enough for a CLI to start, nothing secret.
BASE_ENV = (
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TERM",
    "TMPDIR",
    "TZ",
    "USER",
    "LOGNAME",
    "SHELL",
)
# ``"pass_env": ["*"]``: the whole of lorch's environment (lorch's private
# variables excepted), as every NDJSON agent had before (docs/security.md).
PASS_ALL = "*"


def base_env(pass_env: tuple[str, ...], environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The part of lorch's environment an agent gets: a few basics and ``pass_env``."""
    environ = os.environ if environ is None else environ
    if PASS_ALL in pass_env:
        return dict(environ)
    return {k: environ[k] for k in (*BASE_ENV, *pass_env) if k in environ}


class ConfiguredAcpTransport:
    """The ACP transport (:class:`lorch.agents.acp.port.AcpTransport`) with each role's
    settings from ``lorch.json``, imported when a role first needs it (the SDK is
    slow to import)."""

    capabilities = registry.ACP

    def __init__(self, workspace: Path, config: Config) -> None:
        self.workspace = workspace
        self.config = config
        self._transport: Transport | None = None

    def start(self, launch: Launch, inbox: Inbox) -> AgentPort:
        return self._loaded().start(launch, inbox)

    def check(self, port: AgentPort) -> str:
        return self._loaded().check(port)

    def _loaded(self) -> Transport:
        if self._transport is None:
            from lorch.agents.acp.host import AcpSettings
            from lorch.agents.acp.port import AcpTransport
            from lorch.store.checkpoint import STORE, Checkpoints

            # The engine's own checkpoint store and object (its flock makes sharing it safe).
            ck = Checkpoints.shared(
                self.workspace, self.workspace / STORE, durable=self.config.policy.fsync
            )
            task = dict(self.config.task or {})

            def settings(role: str) -> AcpSettings:
                cfg = self.config.agents[role]
                return AcpSettings(
                    workspace=self.workspace,
                    task=task,
                    permissions=cfg.permissions,
                    prompts=cfg.prompts,
                    test_cmd=task.get("test_cmd"),
                    take=ck.take,
                    changed=ck.changed,
                    init_timeout_s=start_timeout(cfg, self.config.policy.heartbeat_misses),
                    test_timeout_s=cfg.test_timeout_s,
                    max_updates_per_turn=cfg.max_updates_per_turn,
                    fs=serves_fs(cfg),
                )

            self._transport = AcpTransport(settings)
        return self._transport


def serves_fs(cfg: AgentConfig) -> bool:
    """Whether lorch offers ``cfg``'s ACP agent its file service (``fs/*``).

    Off unless the role says ``"fs": true``: every ACP agent must work without it
    (it is a client capability an agent may not rely on), while with it Gemini
    CLI 0.61 cannot create a file (a missing file's ``-32002`` is not "does not
    exist" to it) and Claude Code's adapter does not use it (docs/real-agents.md).
    """
    return bool(cfg.fs)


def start_timeout(cfg: AgentConfig, heartbeat_misses: int) -> float:
    """How long ``cfg``'s agent may take to pass its start-up check."""
    if "start" in cfg.timeouts_s:
        return cfg.timeouts_s["start"]
    if cfg.kind.start_timeout_s is not None:
        return cfg.kind.start_timeout_s
    # The watchdog's allowance for a starting agent (docs/decisions.md D31).
    return max(cfg.heartbeat_interval_s * heartbeat_misses, START_GRACE_S)


def agent_env(
    *,
    base: Mapping[str, str],
    extra: Mapping[str, str],
    workspace: Path,
    run_id: str,
    role: str,
    agent_id: str,
    snapshot_id: str | None,
    heartbeat_interval: float,
) -> dict[str, str]:
    """The environment an agent starts with (the ``LORCH_*`` variables of docs/protocol)."""
    env = {
        **base,
        **extra,
        "PATH": path_with_scripts(),
        "LORCH_WORKSPACE": str(workspace),
        "LORCH_RUN_ID": run_id,
        "LORCH_ROLE": role,
        "LORCH_AGENT_ID": agent_id,
        "LORCH_SNAPSHOT_ID": str(snapshot_id),
        "LORCH_HEARTBEAT_INTERVAL": str(heartbeat_interval),
    }
    for var in PRIVATE_VARS:
        env.pop(var, None)
    return env


class ConfiguredAgents:
    """The agents ``lorch.json`` configures, started through their transport.

    What the engine sees of the configuration: the roles, and a way to start
    one (``lorch.engine.loop.Agents``).
    """

    def __init__(
        self,
        workspace: Path,
        config: Config,
        redactor: Redactor,
        *,
        on_stderr: Callable[[str], None] | None = None,
        transports: Mapping[str, Transport] | None = None,
        log_dir: Path | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.workspace = workspace
        self.config = config
        self.redactor = redactor
        self.on_stderr = on_stderr
        # Where the one line saying agents run without a sandbox goes (once).
        self.notice = notice
        self._told = False
        self.log_dir = log_dir or workspace / layout.LOGS
        # By ``$.agents.ROLE.transport``; a new transport is one more entry here.
        self.transports: Mapping[str, Transport] = transports or {
            t.capabilities.name: t
            for t in (NdjsonTransport(), ConfiguredAcpTransport(workspace, config))
        }

    def roles(self) -> list[str]:
        return list(self.config.agents)

    def checkpointed(self, role: str) -> bool:
        cfg = self.config.agents.get(role)
        return cfg is not None and cfg.needs_checkpoints

    def _cfg(self, role: str) -> AgentConfig:
        cfg = self.config.agents.get(role)
        if cfg is None:
            raise ConfigError(f"lorch.json: $.agents.{role}: no agent configured for role {role}")
        return cfg

    def _cwd(self, cfg: AgentConfig) -> Path:
        return (self.workspace / cfg.cwd) if cfg.cwd else self.workspace

    def argv(self, role: str) -> list[str]:
        """``role``'s command line with its program resolved; ConfigError naming the field."""
        cfg = self._cfg(role)
        return resolve_argv(role, cfg.cmd, self._cwd(cfg))

    def fixture(self, role: str) -> str | None:
        """The fixture of a mockagent role, once it loads; ConfigError naming it if not."""
        cfg = self._cfg(role)
        script = mockagent_script(cfg.cmd)
        if script is None:
            return None
        from mockagent.fixture import FixtureError
        from mockagent.fixture import load as load_fixture

        try:
            load_fixture(self._cwd(cfg) / script)
        except FixtureError as e:
            raise ConfigError(f"lorch.json: $.agents.{role}.cmd: fixture {e}") from None
        return script

    def check(self, role: str) -> None:
        self.argv(role)
        self.fixture(role)
        sandbox.resolve(role, self._cfg(role).sandbox)

    def sandbox_line(self, role: str) -> str:
        """What contains ``role``'s processes, in one line (for ``lorch doctor``)."""
        cfg = self._cfg(role)
        found = sandbox.resolve(role, cfg.sandbox)
        if found.bwrap is None:
            return f"none: {found.why}"
        env = self._env(role, cfg, 1, "doctor", None)
        return self._box(found.bwrap, role, cfg, env, self.argv(role)).describe()

    def _box(
        self, bwrap: str, role: str, cfg: AgentConfig, env: Mapping[str, str], argv: list[str]
    ) -> sandbox.Sandbox:
        return sandbox.Sandbox.build(
            bwrap,
            role,
            self.workspace,
            env,
            own_home="HOME" not in cfg.env,
            needs=[a for a in argv if os.path.isabs(a)],
        )

    def _contain(
        self, role: str, cfg: AgentConfig, env: dict[str, str], argv: list[str]
    ) -> sandbox.Sandbox | None:
        """``role``'s sandbox, its mount points made; None (said once) when it has none."""
        found = sandbox.resolve(role, cfg.sandbox)
        if found.bwrap is None:
            if cfg.sandbox == "auto" and not self._told and self.notice is not None:
                self._told = True
                self.notice(
                    f"lorch: agents run without a sandbox: {found.why} (see docs/security.md)"
                )
            return None
        box = self._box(found.bwrap, role, cfg, env, argv)
        box.prepare()
        return box

    def _env(
        self, role: str, cfg: AgentConfig, generation: int, run_id: str, snapshot_id: str | None
    ) -> dict[str, str]:
        return agent_env(
            base=base_env(cfg.pass_env),
            extra=cfg.env,
            workspace=self.workspace,
            run_id=run_id,
            role=role,
            agent_id=f"{role}#{generation}",
            snapshot_id=snapshot_id,
            heartbeat_interval=cfg.heartbeat_interval_s,
        )

    def launch(self, role: str, generation: int, run_id: str, snapshot_id: str | None) -> Launch:
        cfg = self._cfg(role)
        cwd = self._cwd(cfg)
        env = self._env(role, cfg, generation, run_id, snapshot_id)
        argv = resolve_argv(role, cfg.cmd, cwd)
        wrap = unsandboxed
        box = self._contain(role, cfg, env, argv)
        if box is not None:
            env, argv, wrap = box.env(env), box.wrap(argv, cwd), box.wrap
        return Launch(
            role=role,
            argv=argv,
            cwd=cwd,
            env=env,
            log_path=layout.agent_log(self.log_dir, role, run_id),
            generation=generation,
            redactor=self.redactor,
            on_stderr=self.on_stderr,
            line_limit=self.config.policy.message_max_bytes,
            ready_within=start_timeout(cfg, self.config.policy.heartbeat_misses),
            # Only a heartbeat transport's agent can be started without them.
            heartbeats=not cfg.kind.heartbeats or mockagent_heartbeats(cfg.cmd),
            wrap=wrap,
        )

    def transport(self, role: str) -> Transport:
        """The transport that starts ``role``'s agent; ConfigError if there is none."""
        kind = self._cfg(role).transport
        transport = self.transports.get(kind)
        if transport is None:
            raise ConfigError(
                f"lorch.json: $.agents.{role}.transport: {kind!r} agents cannot be run yet"
            )
        return transport

    def start(
        self, role: str, generation: int, run_id: str, snapshot_id: str | None, inbox: Inbox
    ) -> AgentPort:
        launch = self.launch(role, generation, run_id, snapshot_id)
        return self.transport(role).start(launch, inbox)
