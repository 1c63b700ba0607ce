"""The sandbox of each role (issue 22, point 1): what an agent under bwrap cannot reach.

Real processes throughout: a probe started exactly as lorch starts an agent
(``ConfiguredAgents.launch``: its wrapped argv and its environment) tries
what a hostile agent would and reports what worked; whole ``lorch run``\\ s
check that a setsid grandchild dies with lorch. Each attack is also run with
``"sandbox": "none"``, where it must succeed: the probe can see what it looks for.
Skipped only where bubblewrap cannot run.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lorch.agents import procs, sandbox
from lorch.agents.transport import Launch
from lorch.app import config
from lorch.app.launch import BASE_ENV, ConfiguredAgents
from lorch.app.scenarios import materialize
from lorch.wire.errors import ConfigError
from lorch.wire.redact import Redactor

BWRAP = sandbox.probe()
needs_bwrap = pytest.mark.skipif(BWRAP.bwrap is None, reason=f"no sandbox here: {BWRAP.why}")

# Run inside the sandbox: each attempt, and whether it worked.
PROBE = r"""
import json, os, sys

target = json.loads(sys.argv[1])
ws = os.environ["LORCH_WORKSPACE"]
out = {}

def attempt(name, fn):
    try:
        fn()
        out[name] = True
    except OSError as e:
        out[name] = e.strerror

def append(rel):
    with open(os.path.join(ws, rel), "a") as f:
        f.write("forged\n")

def read(path):
    with open(path, "rb") as f:
        f.read()

attempt("append ledger", lambda: append(target["ledger"]))
attempt("read state", lambda: read(os.path.join(ws, "state", "secret")))
attempt("write state", lambda: append("state/planted"))
attempt("read lorch.json", lambda: read(os.path.join(ws, "lorch.json")))
attempt("write lorch.json", lambda: append("lorch.json"))
attempt("write .git hook", lambda: append(".git/hooks/pre-commit"))
attempt("write reviews", lambda: append("reviews/T-1.json"))
attempt("write spec_notes", lambda: append("spec_notes/T-1.json"))
attempt("replace receipts", lambda: os.rename(os.path.join(ws, "receipts"), os.path.join(ws, "r2")))
attempt("write work", lambda: append("src/work.txt"))
attempt("write home", lambda: append(os.path.join(os.environ["HOME"], ".agentrc")))
attempt("write tmp", lambda: append(target["scratch"]))
attempt("read lorch environ", lambda: read(f"/proc/{target['lorch']}/environ"))
seen = []
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                seen.append(f.read().decode("utf-8", "replace"))
        except OSError:
            pass
# Given reversed: its own command line must not hold it.
out["sees marker"] = any(target["marker"][::-1] in c for c in seen)
out["env"] = sorted(os.environ)
print(json.dumps(out), flush=True)
"""

MARKER = "lorch-sandbox-test-marker-5be1"


def _config(ws: Path, mode: str, **role: Any) -> config.Config:
    agents = {
        r: {"cmd": [sys.executable, str(ws.parent / "probe.py")], "sandbox": mode, **role}
        for r in ("builder", "reviewer", "spec_maintainer")
    }
    raw = {"version": "1", "task": {"id": "T-1", "goal": "g"}, "agents": agents}
    (ws / "lorch.json").write_text(json.dumps(raw) + "\n")
    return config.parse(raw, ws / "lorch.json")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace as a run leaves it: a ledger, state with a secret, a .git, some work."""
    ws = tmp_path / "ws"
    for d in ("events", "state", "receipts", ".git/hooks", "src"):
        (ws / d).mkdir(parents=True)
    (ws / "events" / "run-1.ndjson").write_text('{"kind": "event"}\n')
    (ws / "state" / "secret").write_text("checkpoint store and keys\n")
    (tmp_path / "probe.py").write_text(PROBE)
    return ws


def _launch(ws: Path, cfg: config.Config, role: str, **kw: Any) -> Launch:
    agents = ConfiguredAgents(ws, cfg, Redactor([]), log_dir=ws.parent / "logs", **kw)
    return agents.launch(role, 1, "run-1", None)


# A file the probe writes in /tmp (its own, private one when sandboxed).
SCRATCH = Path(f"/tmp/lorch-sandbox-test-{uuid.uuid4().hex}")


def _probe(ws: Path, launch: Launch) -> dict[str, Any]:
    target = {
        "ledger": "events/run-1.ndjson",
        "lorch": os.getpid(),
        "marker": MARKER[::-1],
        "scratch": str(SCRATCH),
    }
    argv = [*launch.argv, json.dumps(target)]
    done = subprocess.run(
        argv, cwd=launch.cwd, env=launch.env, capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = json.loads(done.stdout)
    return result


@pytest.fixture
def other_agent() -> Iterator[Callable[[Launch], None]]:
    """Starts a process under another role's launch, named by MARKER; killed at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(launch: Launch) -> None:
        code = f"import time, sys; sys.argv.append({MARKER!r}); time.sleep(600)"
        argv = launch.wrap([sys.executable, "-c", code, MARKER], launch.cwd)
        quiet = procs.DEVNULL
        proc = procs.spawn(
            argv, env=launch.env, cwd=launch.cwd, stdin=quiet, stdout=quiet, stderr=quiet
        )
        started.append(proc)

    yield start
    for proc in started:
        procs.kill_and_reap(proc)


# -- what the sandbox stops ---------------------------------------------------------


@needs_bwrap
def test_a_sandboxed_builder_reaches_only_the_work(
    ws: Path, other_agent: Callable[[Launch], None]
) -> None:
    cfg = _config(ws, "bwrap")
    other_agent(_launch(ws, cfg, "reviewer"))
    got = _probe(ws, _launch(ws, cfg, "builder"))
    for attack in (
        "append ledger",
        "read state",
        "write state",
        "read lorch.json",
        "write lorch.json",
        "write .git hook",
        "write reviews",
        "write spec_notes",
        "replace receipts",
        "read lorch environ",
    ):
        assert got[attack] is not True, attack
    assert got["sees marker"] is False  # the reviewer's process is not in its /proc
    assert got["write work"] is got["write home"] is got["write tmp"] is True
    # Nothing reached lorch's files; the ledger is as it was.
    assert (ws / "events" / "run-1.ndjson").read_text() == '{"kind": "event"}\n'
    assert not (ws / ".git" / "hooks" / "pre-commit").exists()
    assert (ws / "state" / "secret").read_text() == "checkpoint store and keys\n"
    assert not (ws / "state" / "planted").exists()
    # Its HOME is its own, kept in state/ (which it cannot otherwise see), and /tmp is private.
    assert (ws / "state" / "homes" / "builder" / ".agentrc").is_file()
    assert not SCRATCH.exists()


@needs_bwrap
def test_each_verdict_directory_is_writable_by_its_role_only(ws: Path) -> None:
    cfg = _config(ws, "bwrap")
    # Neither directory exists before the first start: they are made, then protected.
    assert not (ws / "reviews").exists() and not (ws / "spec_notes").exists()
    reviewer = _probe(ws, _launch(ws, cfg, "reviewer"))
    spec = _probe(ws, _launch(ws, cfg, "spec_maintainer"))
    assert reviewer["write reviews"] is True and reviewer["write spec_notes"] is not True
    assert spec["write spec_notes"] is True and spec["write reviews"] is not True


def test_without_a_sandbox_every_attack_works(
    ws: Path, other_agent: Callable[[Launch], None]
) -> None:
    """The control: the probe does see what the sandbox hides."""
    cfg = _config(ws, "none")
    other_agent(_launch(ws, cfg, "reviewer"))
    got = _probe(ws, _launch(ws, cfg, "builder"))
    for attack in ("append ledger", "read state", "write lorch.json", "write .git hook"):
        assert got[attack] is True, attack
    assert got["read lorch environ"] is True
    assert got["sees marker"] is True
    assert got["write tmp"] is True
    SCRATCH.unlink()


# -- the environment ----------------------------------------------------------------


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_an_ndjson_agent_gets_only_the_allowlist(
    ws: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if mode == "bwrap" and BWRAP.bwrap is None:
        pytest.skip(f"no sandbox here: {BWRAP.why}")
    monkeypatch.setenv("LORCH_TEST_LORCHS_OWN", "not for agents")
    monkeypatch.setenv("PASSED_ON", "yes")
    cfg = _config(ws, mode, pass_env=["PASSED_ON"], env={"GIVEN": "1"})
    got = set(_probe(ws, _launch(ws, cfg, "builder"))["env"])
    allowed = {*BASE_ENV, "PASSED_ON", "GIVEN", "PWD", "SHLVL", "_", "LC_CTYPE"}
    lorchs = {k for k in got if k.startswith("LORCH_")}
    assert lorchs == {
        "LORCH_WORKSPACE",
        "LORCH_RUN_ID",
        "LORCH_ROLE",
        "LORCH_AGENT_ID",
        "LORCH_SNAPSHOT_ID",
        "LORCH_HEARTBEAT_INTERVAL",
    }
    assert got - lorchs <= allowed
    assert {"PASSED_ON", "GIVEN"} <= got


def test_pass_env_star_gives_the_whole_environment_but_lorchs_private_variables(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOMETHING_OF_LORCHS", "x")
    monkeypatch.setenv("LORCH_CRASH_AT", "before:99")
    cfg = _config(ws, "none", pass_env=["*"])
    env = _launch(ws, cfg, "builder").env
    assert env["SOMETHING_OF_LORCHS"] == "x"
    assert "LORCH_CRASH_AT" not in env


@needs_bwrap
def test_a_home_set_in_the_role_env_is_the_one_it_gets(ws: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    cfg = _config(ws, "bwrap", env={"HOME": str(home)})
    got = _probe(ws, _launch(ws, cfg, "builder"))
    assert got["write home"] is True
    assert (home / ".agentrc").is_file()


# -- choosing a sandbox ---------------------------------------------------------------


def test_bwrap_where_it_cannot_run_is_one_line_naming_the_role(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sandbox, "probe", lambda: sandbox.Probe(None, "bwrap is not on PATH"))
    cfg = _config(ws, "none")
    cfg.agents["reviewer"] = _config(ws, "bwrap").agents["reviewer"]
    agents = ConfiguredAgents(ws, cfg, Redactor([]))
    agents.check("builder")
    with pytest.raises(ConfigError) as e:
        agents.check("reviewer")
    assert str(e.value) == (
        'lorch.json: $.agents.reviewer.sandbox: "bwrap", but bwrap is not on PATH; '
        'install bubblewrap, or set "auto" or "none"'
    )


def test_auto_without_bwrap_says_so_once(ws: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "probe", lambda: sandbox.Probe(None, "bwrap is not on PATH"))
    said: list[str] = []
    cfg = _config(ws, "auto")
    agents = ConfiguredAgents(ws, cfg, Redactor([]), notice=said.append)
    launches = [agents.launch(role, 1, "run-1", None) for role in cfg.agents]
    assert said == [
        "lorch: agents run without a sandbox: bwrap is not on PATH (see docs/security.md)"
    ]
    assert all(launch.argv[0] == sys.executable for launch in launches)


@needs_bwrap
def test_a_symlink_where_a_protected_directory_belongs_is_refused(ws: Path) -> None:
    (ws / "reviews").symlink_to(ws / "src")
    with pytest.raises(ConfigError, match=r"reviews: expected a directory, found a symlink"):
        _launch(ws, _config(ws, "bwrap"), "builder")


# -- dying with lorch ---------------------------------------------------------------

# A builder that, once it has a command, starts a setsid grandchild holding a lock
# on a file in the workspace, then never answers.
SPAWNER = r"""
import json, os, subprocess, sys, threading, time

ws = os.environ["LORCH_WORKSPACE"]
interval = float(os.environ["LORCH_HEARTBEAT_INTERVAL"])

def beat():
    msg = {"kind": "heartbeat", "agent": {"agent_type": "builder", "agent_id": "b"},
           "seq": 0, "status": "ready", "pid": os.getpid(), "uptime_s": 0,
           "last_activity_at": "2026-01-01T00:00:00Z"}
    while True:
        sys.stdout.write(json.dumps(msg) + "\n")
        sys.stdout.flush()
        time.sleep(interval)

with open(os.path.join(ws, "builder.pid"), "w") as f:
    f.write(str(os.getpid()))
threading.Thread(target=beat, daemon=True).start()
sys.stdin.readline()
hold = (
    "import fcntl, os, sys, time\n"
    "f = open(sys.argv[1], 'w')\n"
    "fcntl.flock(f, fcntl.LOCK_EX)\n"
    "f.write(str(os.getpid())); f.flush()\n"
    "os.rename(sys.argv[1] + '.tmp', sys.argv[1] + '.ready')\n"
    "time.sleep(600)\n"
)
open(os.path.join(ws, "held.tmp"), "w").close()
subprocess.Popen([sys.executable, "-c", hold, os.path.join(ws, "held")], start_new_session=True)
sys.stdin.read()
"""


def _wait(cond: Callable[[], bool], what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"gave up waiting: {what}"
        time.sleep(0.02)


def _lock_free(path: Path) -> bool:
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True


@pytest.mark.parametrize("mode", ["bwrap", "none"])
def test_a_setsid_grandchild_dies_with_lorch(
    mode: str, tmp_path: Path, lorch_bin: str, clean_env: dict[str, str]
) -> None:
    if mode == "bwrap" and BWRAP.bwrap is None:
        pytest.skip(f"no sandbox here: {BWRAP.why}")
    ws = tmp_path / "ws"
    materialize("happy-path", ws)
    (tmp_path / "spawner.py").write_text(SPAWNER)
    raw = json.loads((ws / "lorch.json").read_text())
    for role in raw["agents"]:
        raw["agents"][role]["sandbox"] = mode
    raw["agents"]["builder"] = {
        "cmd": [sys.executable, str(tmp_path / "spawner.py")],
        "heartbeat_interval_s": 0.5,
        "sandbox": mode,
    }
    (ws / "lorch.json").write_text(json.dumps(raw))
    run = subprocess.Popen(
        [lorch_bin, "run", "--workspace", str(ws)],
        env=clean_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    held = ws / "held"
    try:
        _wait(lambda: (ws / "held.ready").exists() or run.poll() is not None, "the grandchild")
        assert run.poll() is None, "lorch ended before its builder started the grandchild"
        assert not _lock_free(held)
        os.kill(run.pid, signal.SIGKILL)  # lorch alone: its agents are in groups of their own
        run.wait()
        if mode == "bwrap":
            _wait(lambda: _lock_free(held), "the grandchild to die with lorch")
        else:
            # The control: nothing but the sandbox ends it. Its parent, the
            # builder, ends at EOF; the grandchild holds its lock after that.
            builder = int((ws / "builder.pid").read_text())
            _wait(lambda: procs.is_zombie(builder), "the builder to end at EOF")
            assert not _lock_free(held)
            os.kill(int(held.read_text()), signal.SIGKILL)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
