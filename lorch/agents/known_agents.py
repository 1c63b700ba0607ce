"""The ACP agents lorch knows by name: how to start each, what it needs from the environment.

One table for the first run's ``lorch.json`` (:mod:`lorch.app.firstrun`) and for the
line lorch prints when an agent needs authentication (:mod:`lorch.agents.acp.port`);
docs/real-agents.md says the same in prose. An agent is recognised by its
program's name (``argv[0]``'s basename).
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from lorch.agents import registry

# What every agent that calls a model over HTTPS may need to get out through a
# proxy (an ACP agent sees only the variables its role's pass_env names).
PROXY_VARS = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY")


@dataclass(frozen=True)
class KnownAgent:
    name: str
    # The program as found on PATH, and the command line that starts it in ACP mode.
    exe: str
    argv: tuple[str, ...]
    # The variables that carry a key, in the order to suggest them (the first is the usual one).
    keys: tuple[str, ...]
    # Everything else it reads from the environment for its model: base URL, model, cloud.
    extra: tuple[str, ...]
    # Where a login made once on this machine is kept (then no key is needed).
    login: str
    # What else a key in the environment needs before the agent uses it ("": nothing).
    key_use: str = ""

    @property
    def transport(self) -> str:
        """The transport its role names: every agent here speaks ACP."""
        return registry.ACP.name

    def started_by(self, transport: str) -> bool:
        """Whether a role of ``transport`` (its name in lorch.json) starts it as it is meant to."""
        return transport == self.transport

    @property
    def pass_env(self) -> list[str]:
        """The role's ``pass_env``: its keys, its other variables, the proxy variables."""
        return [*self.keys, *self.extra, *PROXY_VARS]


CLAUDE = KnownAgent(
    "Claude Code",
    "claude-agent-acp",
    ("claude-agent-acp",),
    ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"),
    ("ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL"),
    "`claude /login`, kept in ~/.claude",
)
# The adapter's earlier name.
CLAUDE_OLD = KnownAgent(
    CLAUDE.name, "claude-code-acp", ("claude-code-acp",), CLAUDE.keys, CLAUDE.extra, CLAUDE.login
)
# codex-acp's built-in "openai" provider takes a key only through ACP
# ``authenticate``, which lorch does not send: the first run names a provider of
# its own that reads OPENAI_API_KEY (``-c`` config overrides, no file to write).
CODEX_PROVIDER = (
    "-c",
    'model_provider="openai-key"',
    "-c",
    'model_providers.openai-key={name="OpenAI", base_url="https://api.openai.com/v1", '
    'env_key="OPENAI_API_KEY", wire_api="responses"}',
)
CODEX = KnownAgent(
    "Codex",
    "codex-acp",
    ("codex-acp", *CODEX_PROVIDER),
    ("OPENAI_API_KEY", "CODEX_API_KEY"),
    ("OPENAI_BASE_URL",),
    "`codex login`, kept in ~/.codex",
    # codex-acp asks the client to authenticate (ACP ``authenticate``, which lorch
    # does not send) before it reads a key for its built-in provider.
    "and name it as env_key of a model provider (`-c` in its cmd, or its config.toml; "
    "codex-acp reads no key from the environment for its built-in openai provider)",
)
GEMINI = KnownAgent(
    "Gemini CLI",
    "gemini",
    ("gemini", "--acp"),
    ("GEMINI_API_KEY", "GOOGLE_API_KEY"),
    (
        "GOOGLE_GEMINI_BASE_URL",
        "GOOGLE_GENAI_USE_VERTEXAI",
        "GOOGLE_CLOUD_PROJECT",
        "GOOGLE_CLOUD_LOCATION",
    ),
    "a Google login, kept in ~/.gemini",
)
# In order of preference for the first run.
AGENTS = (CLAUDE, CLAUDE_OLD, CODEX, GEMINI)


def command_of(argv: list[str] | tuple[str, ...]) -> list[str]:
    """The agent's own command line: CMD of a sandboxed ``bwrap … -- CMD``."""
    if argv and os.path.basename(argv[0]) == "bwrap" and "--" in argv:
        return list(argv[list(argv).index("--") + 1 :])
    return list(argv)


def known(argv: list[str] | tuple[str, ...]) -> KnownAgent | None:
    """The known agent ``argv`` starts, by its program's name; None for any other.

    A command line wrapped in lorch's sandbox (``bwrap … -- CMD``) is CMD's.
    """
    argv = command_of(argv)
    if not argv:
        return None
    name = os.path.basename(argv[0])
    return next((a for a in AGENTS if a.exe == name), None)


def key_hint(
    agent: KnownAgent, role: str, passed: Collection[str], environ: Mapping[str, str]
) -> str:
    """What to do about a missing key: the variables to set, or the ones set in
    ``environ`` (lorch's) but not ``passed`` to the agent."""
    unpassed = [k for k in agent.keys if environ.get(k) and k not in passed]
    given = [k for k in agent.keys if k in passed]
    if agent.key_use and given:
        return (
            f"{' and '.join(given)} {'is' if len(given) == 1 else 'are'} passed, "
            f"but {agent.name} does not use {'it' if len(given) == 1 else 'them'} alone: "
            f"{agent.key_use.removeprefix('and ')}, or log in once ({agent.login})"
        )
    if unpassed:
        return (
            f"{' and '.join(unpassed)} {'is' if len(unpassed) == 1 else 'are'} set in lorch's "
            f"environment but not passed to the agent: add {'it' if len(unpassed) == 1 else 'them'}"
            f" to $.agents.{role}.pass_env"
        )
    use = f" {agent.key_use}" if agent.key_use else ""
    return (
        f"set {' or '.join(agent.keys)} and list it in $.agents.{role}.pass_env{use}, "
        f"or log in once ({agent.login})"
    )


def silence_hint(argv: list[str], role: str) -> str:
    """For a turn that timed out with nothing said: where a known agent's model is set."""
    agent = known(argv)
    if agent is None:
        return ""
    urls = [v for v in agent.extra if v.endswith("_BASE_URL")]
    where = " and ".join([*urls, *PROXY_VARS[:1]]) if urls else PROXY_VARS[0]
    return (
        f" (a model {agent.name} cannot reach is retried silently: check {where} "
        f"in $.agents.{role}.pass_env or env)"
    )
