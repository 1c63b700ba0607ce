"""pytest plugin for projects that use lorch (registered as the ``lorch`` entry point).

Import-light on purpose: pytest loads it in every session, so lorch itself is
imported only inside the fixtures that need it.

Fixtures:

- ``lorch_scenario(name_or_path) -> Path``: a fresh workspace made from a scenario;
- ``lorch_cli(*args, workspace=..., env=...) -> CompletedProcess``: run ``lorch``
  as a subprocess (with the ``mockagent`` next to it on PATH).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def _bin(name: str) -> str:
    return str(Path(sys.executable).parent / name)


@pytest.fixture
def lorch_scenario(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """Factory: ``lorch_scenario("review-loop")`` → a fresh workspace of that scenario."""

    def make(name_or_path: str) -> Path:
        from lorch.app.scenarios import materialize

        ws = tmp_path_factory.mktemp("lorch-ws")
        materialize(name_or_path, ws)
        return ws

    return make


@pytest.fixture
def lorch_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run ``lorch ARGS…`` in a workspace; returns the completed process (text)."""

    def run(
        *args: str, workspace: Path, env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        from lorch.app.launch import with_scripts_path

        full_env = with_scripts_path({**os.environ, **(env or {})})
        cmd: list[Any] = [_bin("lorch"), *args, "--workspace", str(workspace)]
        return subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)

    return run


# -- crash points -----------------------------------------------------------------

MARKER = "lorch_crashpoints"
_baselines: dict[tuple[str, tuple[tuple[str, str], ...]], Any] = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("lorch").addoption(
        "--lorch-shard",
        default=None,
        metavar="I/N",
        help="run only the I-th of N equal shares of the crash points (1-based), to spread a "
        "crash suite over N machines; collection is deterministic, so the shares never overlap",
    )


def _shard(spec: str) -> tuple[int, int]:
    i, sep, n = spec.partition("/")
    if not (sep and i.isdigit() and n.isdigit() and 1 <= int(i) <= int(n)):
        raise pytest.UsageError(f"--lorch-shard {spec!r}: expected I/N with 1 <= I <= N, e.g. 2/4")
    return int(i), int(n)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    spec = config.getoption("--lorch-shard")
    if not spec:
        return
    i, n = _shard(str(spec))
    # Crash points in node-id order: the same on every machine and worker.
    points = sorted(
        item.nodeid
        for item in items
        if "lorch_crash_point" in getattr(getattr(item, "callspec", None), "params", {})
    )
    mine = {nodeid for k, nodeid in enumerate(points) if k % n == i - 1}
    others = set(points) - mine
    keep = [it for it in items if it.nodeid not in others]
    dropped = [it for it in items if it.nodeid in others]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        f"{MARKER}(scenario, modes=None, offsets=None, env=None): run the test once per crash "
        "point of the scenario; the test takes the `lorch_crash_point` fixture",
    )


def _shared_baseline(scenario: str, env: dict[str, str], record: Callable[..., Any]) -> Any:
    """The scenario's baseline, recorded once per test run: pytest-xdist's
    workers of one run (same ``PYTEST_XDIST_TESTRUNUID``) share it through a
    file, the first to get the lock records it. Alone, a session records its own.
    """
    run = os.environ.get("PYTEST_XDIST_TESTRUNUID")
    if not run or not run.isalnum():
        return record(scenario, env)
    import fcntl
    import hashlib
    import json
    import tempfile

    from lorch.crashtest.baseline import Baseline

    name = hashlib.sha256(json.dumps([scenario, sorted(env.items())]).encode()).hexdigest()[:16]
    base = Path(tempfile.gettempdir()) / f"lorch-baselines-{run}"
    base.mkdir(mode=0o700, exist_ok=True)
    path = base / f"{name}.json"
    with open(base / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if path.exists():
            data = json.loads(path.read_text(encoding="utf-8"))
            return Baseline(Path(data["scenario"]), data["records"], data["files"], data["status"])
        b = record(scenario, env)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps(
                {
                    "scenario": str(b.scenario),
                    "records": b.records,
                    "files": b.files,
                    "status": b.status,
                }
            ),
            encoding="utf-8",
        )
        os.replace(tmp, path)
        return b


class CrashPoint:
    """One crash point of a scenario: ``explore()`` crashes, resumes, checks."""

    def __init__(self, baseline: Any, point: Any, env: dict[str, str]) -> None:
        self.baseline = baseline
        self.point = point
        self.env = env

    def explore(self, workdir: Path) -> Any:
        """Crash, resume, check. The point runs in the harness's scratch folder
        (RAM when there is one); a failed point's workspace is kept in ``workdir``."""
        import tempfile

        from lorch.crashtest.harness import Options, explore

        opts = Options(jobs=1, extra_env=self.env, keep_failed=workdir)
        with tempfile.TemporaryDirectory(prefix="lorch-point-", dir=opts.scratch) as tmp:
            return explore(self.point, self.baseline, opts, Path(tmp))

    def __repr__(self) -> str:
        return f"CrashPoint({self.point.name})"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    marker = metafunc.definition.get_closest_marker(MARKER)
    if marker is None or "lorch_crash_point" not in metafunc.fixturenames:
        return
    from lorch.crashtest import baseline as recorded
    from lorch.crashtest.harness import DEFAULT_MODES, points

    scenario = str(marker.args[0] if marker.args else marker.kwargs["scenario"])
    modes = marker.kwargs.get("modes") or DEFAULT_MODES
    env = dict(marker.kwargs.get("env") or {})
    key = (scenario, tuple(sorted(env.items())))
    if key not in _baselines:
        _baselines[key] = _shared_baseline(scenario, env, recorded.record_baseline)
    baseline = _baselines[key]
    chosen = points(baseline, modes, marker.kwargs.get("offsets"))
    metafunc.parametrize(
        "lorch_crash_point",
        [CrashPoint(baseline, p, env) for p in chosen],
        ids=[p.name for p in chosen],
    )


@pytest.fixture
def lorch_crash_point(request: pytest.FixtureRequest) -> CrashPoint:
    """Set by the ``lorch_crashpoints`` marker; see docs/crash-testing.md."""
    param = getattr(request, "param", None)
    if not isinstance(param, CrashPoint):
        pytest.fail(f"lorch_crash_point needs @pytest.mark.{MARKER}(scenario, ...) on the test")
    return param
