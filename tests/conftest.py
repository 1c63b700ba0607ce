"""Shared fixtures: where the installed console scripts are, and a clean env.

Also the Hypothesis profiles, chosen by ``HYPOTHESIS_PROFILE`` (or pytest's
``--hypothesis-profile``):

- ``ci`` (the default): every property test at the count it was written with,
  derandomized (a failure on one machine fails on every machine, with the same
  example) and with no example database;
- ``dev``: a fifth of the examples, random, remembering failures in
  ``.hypothesis/`` so the next run tries them first: the quick local loop.

A test that wants other than the profile's count says how many it runs under
``ci`` with :func:`examples`; the profile scales it.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

BIN = Path(sys.executable).parent

PROFILE_ENV = "HYPOTHESIS_PROFILE"
CI_EXAMPLES = 100  # the ci profile's count for a test that names none; examples(n) scales from it
settings.register_profile(
    "ci",
    max_examples=CI_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", max_examples=CI_EXAMPLES // 5, deadline=None)
_profile = os.environ.get(PROFILE_ENV, "ci")
if _profile not in ("ci", "dev"):
    raise pytest.UsageError(f"{PROFILE_ENV}={_profile!r}: expected ci or dev")
settings.load_profile(_profile)


def examples(ci: int) -> int:
    """How many examples a test that runs ``ci`` of them under the ci profile
    runs under the loaded one (at least 1)."""
    return max(1, math.ceil(ci * settings.default.max_examples / CI_EXAMPLES))


def script(name: str) -> str:
    """Path of a console script installed next to the running Python."""
    path = BIN / name
    if not path.exists():
        pytest.fail(
            f"{name} is not installed next to {sys.executable}; run pip install -e '.[test]'"
        )
    return str(path)


@pytest.fixture(scope="session")
def lorch_bin() -> str:
    return script("lorch")


@pytest.fixture(scope="session")
def mockagent_bin() -> str:
    return script("mockagent")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The environment for subprocesses: no failpoints or planted bugs leaking in."""
    for var in ("LORCH_CRASH_AT", "LORCH_PLANT_BUG", "MOCKAGENT_STATE_DIR"):
        monkeypatch.delenv(var, raising=False)
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(autouse=True)
def _nested_sessions_stand_alone(request: pytest.FixtureRequest) -> None:
    """A pytester session is a test run of its own, not part of this one's xdist
    run: it must not inherit a worker's identity (the lorch plugin shares crash
    baselines between the workers of one ``PYTEST_XDIST_TESTRUNUID``)."""
    if "pytester" not in request.fixturenames:
        return
    mp = request.getfixturevalue("monkeypatch")
    for var in [v for v in os.environ if v.startswith("PYTEST_XDIST_")]:
        mp.delenv(var)
