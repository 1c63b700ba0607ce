"""The real ACP agents the offline tests drive, installed with npm from a pinned lock.

``tests/realagents/npm/package.json`` and its ``package-lock.json`` pin the
agents (``@zed-industries/claude-agent-acp``, ``@google/gemini-cli``,
``@zed-industries/codex-acp`` with its native binary for this platform) and
everything under them, by version and integrity hash. :func:`ensure_installed`
runs ``npm ci`` with them into a cache directory named after the lock's digest
(so a changed lock is a new install and an unchanged one is installed once per
machine), under a file lock (parallel test processes install once), and marks
the directory complete only after npm succeeded. ``.ci/run`` calls it before the tests
(``python -m tests.realagents.adapters``); the tests' fixtures call it too.

The cache is ``$LORCH_NPM_CACHE`` if set, else ``$XDG_CACHE_HOME/lorch/npm``
(``~/.cache/lorch/npm``).

Environment for the agent: :func:`offline_env` (Claude Code),
:func:`gemini_offline_env` (Gemini CLI) and :func:`codex_offline_env` (Codex) —
everything the agent needs to run against a local model endpoint and nothing else.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from lorch.agents.known_agents import CODEX_PROVIDER

NPM_DIR = Path(__file__).resolve().parent / "npm"
ADAPTER = "@zed-industries/claude-agent-acp"
GEMINI = "@google/gemini-cli"
CODEX = "@zed-industries/codex-acp"
STAMP = ".lorch-installed"


class InstallError(Exception):
    """npm could not install the pinned agents; the message says what npm said."""


def node_missing() -> str | None:
    """Why the real agents cannot run here (no node or npm), or None."""
    missing = [tool for tool in ("node", "npm") if shutil.which(tool) is None]
    return f"{' and '.join(missing)} not on PATH" if missing else None


def without_node(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """What a real-agent test does where node or npm is missing: ("skip" | "fail", why).

    CI (``CI`` set) must run these tests, so there a missing node fails them.
    """
    why = node_missing()
    if why is None:
        return None
    if environ.get("CI"):
        return "fail", f"{why}: CI must run the real Claude Code tests (install node and npm)"
    return "skip", f"{why}: the real Claude Code tests need node and npm"


def cache_dir() -> Path:
    root = os.environ.get("LORCH_NPM_CACHE")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        base = Path(xdg) / "lorch" / "npm"
    digest = hashlib.sha256()
    for name in ("package.json", "package-lock.json"):
        digest.update((NPM_DIR / name).read_bytes())
    return base / digest.hexdigest()[:16]


def adapter_version(package: str = ADAPTER) -> str:
    """The pinned version of ``package`` (default: the Claude Code ACP adapter), from the lock."""
    lock = json.loads((NPM_DIR / "package-lock.json").read_text(encoding="utf-8"))
    return str(lock["packages"][f"node_modules/{package}"]["version"])


def claude_agent_acp(root: Path | None = None) -> Path:
    """The adapter's entry point inside an install (``node`` runs it)."""
    return (root or cache_dir()) / "node_modules" / ".bin" / "claude-agent-acp"


def gemini(root: Path | None = None) -> Path:
    """Gemini CLI's entry point inside an install (``gemini --acp`` speaks ACP)."""
    return (root or cache_dir()) / "node_modules" / ".bin" / "gemini"


def codex_acp(root: Path | None = None) -> Path:
    """The Codex ACP adapter's entry point inside an install (it runs the native binary)."""
    return (root or cache_dir()) / "node_modules" / ".bin" / "codex-acp"


# Node's names for this machine's platform and architecture, as the Codex adapter's
# per-platform packages are named (``@zed-industries/codex-acp-linux-x64``).
_NODE_ARCH = {"x86_64": "x64", "amd64": "x64", "aarch64": "arm64", "arm64": "arm64"}
_NODE_OS = {"linux": "linux", "darwin": "darwin", "win32": "win32"}


def codex_native(root: Path | None = None) -> Path | None:
    """The native Codex binary npm installs for this machine; None where none is published.

    It comes in an optional dependency per platform, which npm skips silently
    when optional dependencies are omitted: then the adapter exits at its first
    start, so the install checks for it.
    """
    system = _NODE_OS.get(sys.platform)
    arch = _NODE_ARCH.get(platform.machine().lower())
    if system is None or arch is None:
        return None
    exe = "codex-acp.exe" if system == "win32" else "codex-acp"
    return (root or cache_dir()) / "node_modules" / f"{CODEX}-{system}-{arch}" / "bin" / exe


def ensure_installed(*, timeout: float = 900) -> Path:
    """Install the pinned agents if this machine does not have them yet; their root."""
    target = cache_dir()
    if (target / STAMP).exists():
        return target
    why = node_missing()
    if why is not None:
        raise InstallError(f"cannot install {ADAPTER}: {why}")
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer; the others wait and reuse
        if (target / STAMP).exists():
            return target
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(NPM_DIR / name, target / name)
        cmd = ["npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"]
        try:
            proc = subprocess.run(
                cmd, cwd=target, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired:
            raise InstallError(f"npm ci in {target} did not finish in {timeout:g}s") from None
        native = codex_native(target)
        wanted = [claude_agent_acp(target), gemini(target), codex_acp(target)]
        if proc.returncode != 0 or not all(p.exists() for p in wanted):
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
            raise InstallError(
                f"npm ci in {target} failed (exit {proc.returncode}): " + " | ".join(tail)
            )
        if native is not None and not native.exists():
            raise InstallError(
                f"npm ci in {target} did not install {native.relative_to(target)} "
                "(are optional dependencies omitted? the Codex adapter needs it)"
            )
        (target / STAMP).write_text(adapter_version() + "\n")
    return target


def offline_env(base_url: str, home: Path, *, path: str | None = None) -> dict[str, str]:
    """The environment Claude Code needs to work offline against ``base_url``.

    A private ``HOME`` (its settings, sessions and caches stay in the test),
    ``IS_SANDBOX=1`` (it refuses to run as root without it, and CI runs as root),
    a dummy key, no nonessential traffic (telemetry, auto-update, error reports),
    and the endpoint as the proxy for everything else, so any request that is not
    to the model shows up in the endpoint's log and is refused there.
    """
    return {
        "PATH": path if path is not None else os.environ.get("PATH", ""),
        "HOME": str(home),
        "IS_SANDBOX": "1",
        "ANTHROPIC_BASE_URL": base_url,
        "ANTHROPIC_API_KEY": "sk-ant-offline-test",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "HTTPS_PROXY": base_url,
        "HTTP_PROXY": base_url,
        "NO_PROXY": "127.0.0.1,localhost",
    }


# Gemini CLI's settings for an offline test (``$HOME/.gemini/settings.json``): no
# usage statistics (sent to play.googleapis.com), no telemetry, no update check,
# the API key as the way to authenticate.
GEMINI_SETTINGS: dict[str, object] = {
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
    "security": {"auth": {"selectedType": "gemini-api-key"}},
}


def gemini_offline_env(
    base_url: str, home: Path, *, path: str | None = None, key: str | None = "offline-test-key"
) -> dict[str, str]:
    """The environment Gemini CLI needs to work offline against ``base_url``.

    A private ``HOME`` holding :data:`GEMINI_SETTINGS` (its sessions, history and
    installation id stay in the test), a private ``TMPDIR`` (it writes error
    reports there), a dummy key (``key=None``: none at all), the workspace
    trusted, and the endpoint as the proxy for everything else, so any request
    that is not to the model shows up in the endpoint's log and is refused there.
    """
    settings = home / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps(GEMINI_SETTINGS, indent=2) + "\n")
    tmp = home / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {
        "PATH": path if path is not None else os.environ.get("PATH", ""),
        "HOME": str(home),
        "TMPDIR": str(tmp),
        "GOOGLE_GEMINI_BASE_URL": base_url,
        "GEMINI_CLI_TRUST_WORKSPACE": "true",
        "HTTPS_PROXY": base_url,
        "HTTP_PROXY": base_url,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    if key is not None:
        env["GEMINI_API_KEY"] = key
    return env


# The model Codex is told to use: one its pinned version has metadata for (with
# another it warns in the session and offers no apply_patch tool).
CODEX_MODEL = "gpt-5.3-codex"


def codex_args(base_url: str, *, sandbox_mode: str) -> list[str]:
    """The ``codex-acp`` options (``-c`` config overrides) for an offline test.

    The model provider the first run gives Codex (:data:`CODEX_PROVIDER`: not
    the built-in ``openai`` one, with which the adapter refuses ``session/new``
    until a client sends ACP ``authenticate``; this one reads ``OPENAI_API_KEY``)
    with the endpoint as its ``base_url``. ``sandbox_mode`` is Codex's own
    sandbox around its commands. On the command line, not in ``config.toml``: a
    role's ``cmd`` in ``lorch.json`` says it all.
    """
    overrides = [
        f'model_providers.openai-key.base_url="{base_url}/v1"',
        f'model="{CODEX_MODEL}"',
        f'sandbox_mode="{sandbox_mode}"',
        "check_for_update_on_startup=false",
        "analytics.enabled=false",
    ]
    return [*CODEX_PROVIDER, *(arg for o in overrides for arg in ("-c", o))]


def codex_offline_env(base_url: str, *, path: str | None = None) -> dict[str, str]:
    """The environment Codex (``codex-acp`` with :func:`codex_args`) needs offline.

    A dummy key, and the endpoint as the proxy for everything else, so any
    request that is not to the model shows up in the endpoint's log and is
    refused there.
    """
    return {
        "PATH": path if path is not None else os.environ.get("PATH", ""),
        "OPENAI_API_KEY": "sk-offline-test",
        "HTTPS_PROXY": base_url,
        "HTTP_PROXY": base_url,
        "NO_PROXY": "127.0.0.1,localhost",
    }


def main() -> int:
    try:
        root = ensure_installed()
    except InstallError as exc:
        print(f"tests/realagents: {exc}", file=sys.stderr)
        return 1
    print(f"{ADAPTER} {adapter_version()}: {claude_agent_acp(root)}")
    print(f"{GEMINI} {adapter_version(GEMINI)}: {gemini(root)}")
    print(f"{CODEX} {adapter_version(CODEX)}: {codex_acp(root)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
