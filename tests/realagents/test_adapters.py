"""The npm install of the pinned real agents (with a stand-in npm: no network needed)."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from tests.realagents import adapters


def _tool(bindir: Path, name: str, body: str) -> None:
    path = bindir / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_tools(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with only a stand-in node and npm, and a private install cache."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    _tool(bindir, "node", "exit 0\n")
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")  # the fakes come first
    monkeypatch.setenv("LORCH_NPM_CACHE", str(tmp_path / "cache"))
    return bindir


def test_the_pin_is_one_exact_version_with_integrity_hashes() -> None:
    package = json.loads((adapters.NPM_DIR / "package.json").read_text())
    for name in (adapters.ADAPTER, adapters.GEMINI, adapters.CODEX):
        assert package["dependencies"][name] == adapters.adapter_version(name)  # exact
    lock = json.loads((adapters.NPM_DIR / "package-lock.json").read_text())
    deps = {k: v for k, v in lock["packages"].items() if k}
    assert deps and all("integrity" in v for v in deps.values())
    assert not any("resolved" in v for v in deps.values())  # any registry will do


def test_installs_once_per_lock_and_marks_the_install_complete(fake_tools: Path) -> None:
    count = fake_tools.parent / "npm-calls"
    _tool(
        fake_tools,
        "npm",
        f'echo "$@" >> {count}\n'
        "mkdir -p node_modules/.bin && touch node_modules/.bin/claude-agent-acp "
        "node_modules/.bin/gemini node_modules/.bin/codex-acp\n" + _native_install(),
    )
    root = adapters.ensure_installed()
    assert root == adapters.cache_dir() and root.parent == fake_tools.parent / "cache"
    assert adapters.ensure_installed() == root
    assert count.read_text().splitlines() == [
        "ci --no-audit --no-fund --ignore-scripts --loglevel=error"
    ]
    assert (root / adapters.STAMP).read_text().strip() == adapters.adapter_version()
    assert (root / "package-lock.json").read_bytes() == (
        adapters.NPM_DIR / "package-lock.json"
    ).read_bytes()
    assert adapters.claude_agent_acp(root).exists() and adapters.gemini(root).exists()
    assert adapters.codex_acp(root).exists()


def _native_install() -> str:
    """What the stand-in npm runs to install Codex's native binary for this machine."""
    native = adapters.codex_native(Path("."))
    if native is None:
        return ""
    return f"mkdir -p {native.parent} && touch {native}\n"


def test_an_install_without_codexs_native_binary_is_one_error_naming_it(
    fake_tools: Path,
) -> None:
    if adapters.codex_native() is None:
        pytest.skip("Codex publishes no native binary for this machine")
    _tool(
        fake_tools,
        "npm",
        "mkdir -p node_modules/.bin && touch node_modules/.bin/claude-agent-acp "
        "node_modules/.bin/gemini node_modules/.bin/codex-acp\n",
    )
    with pytest.raises(adapters.InstallError, match=r"did not install .*codex-acp-.*optional"):
        adapters.ensure_installed()
    assert not (adapters.cache_dir() / adapters.STAMP).exists()


def test_a_failed_npm_ci_is_one_error_with_what_npm_said(fake_tools: Path) -> None:
    _tool(fake_tools, "npm", "echo 'npm error code E404' >&2\necho 'npm error 404 Not Found' >&2\n"
          "exit 1\n")  # fmt: skip
    with pytest.raises(adapters.InstallError, match=r"failed \(exit 1\): .*404 Not Found"):
        adapters.ensure_installed()
    # Nothing is marked installed: the next call tries again.
    assert not (adapters.cache_dir() / adapters.STAMP).exists()


def test_without_node_the_install_says_so_and_ci_fails_instead_of_skipping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither node nor npm
    monkeypatch.setenv("LORCH_NPM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(adapters.InstallError, match="node and npm not on PATH"):
        adapters.ensure_installed()
    assert adapters.without_node({}) == (
        "skip",
        "node and npm not on PATH: the real Claude Code tests need node and npm",
    )
    action, why = adapters.without_node({"CI": "true"}) or ("", "")
    assert action == "fail" and "CI must run" in why


def test_offline_env_keeps_the_agent_off_the_network(tmp_path: Path) -> None:
    env = adapters.offline_env("http://127.0.0.1:9", tmp_path, path="/bin")
    assert env["ANTHROPIC_BASE_URL"] == env["HTTPS_PROXY"] == env["HTTP_PROXY"]
    assert env["HOME"] == str(tmp_path) and env["IS_SANDBOX"] == "1"
    assert env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] == "1"
    assert "127.0.0.1" in env["NO_PROXY"]
    assert not set(env) & {k for k in os.environ if k.endswith("_TOKEN")}


def test_gemini_offline_env_keeps_it_off_the_network_and_out_of_the_real_home(
    tmp_path: Path,
) -> None:
    env = adapters.gemini_offline_env("http://127.0.0.1:9", tmp_path, path="/bin")
    assert env["GOOGLE_GEMINI_BASE_URL"] == env["HTTPS_PROXY"] == "http://127.0.0.1:9"
    assert env["HOME"] == str(tmp_path) and env["TMPDIR"].startswith(str(tmp_path))
    settings = json.loads((tmp_path / ".gemini" / "settings.json").read_text())
    assert settings["privacy"]["usageStatisticsEnabled"] is False
    assert settings["general"]["enableAutoUpdate"] is False
    assert "GEMINI_API_KEY" not in adapters.gemini_offline_env("http://x", tmp_path, key=None)
