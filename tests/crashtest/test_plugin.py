"""The pytest plugin, tested with pytester; the example suite from the docs runs here."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

EXAMPLE = """
import pytest


@pytest.mark.lorch_crashpoints("happy-path", modes=["kill", "torn"], offsets=[6, 10])
def test_resume_after_crash(lorch_crash_point, tmp_path):
    result = lorch_crash_point.explore(tmp_path)
    assert result.verdict == "pass", f"{result.invariant}: {result.detail}"


def test_workspace_from_scenario(lorch_scenario, lorch_cli):
    ws = lorch_scenario("happy-path")
    done = lorch_cli("run", workspace=ws)
    assert done.returncode == 0
    assert "[lorch] DONE" in done.stdout
"""


def test_docs_example_suite_runs(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_example=EXAMPLE)
    result = pytester.runpytest_subprocess("-p", "lorch", "-v")
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        ["*test_resume_after_crash?kill@6?*PASSED*", "*test_resume_after_crash?torn@10?*PASSED*"]
    )


def test_crash_point_fixture_without_marker_says_what_to_do(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(lorch_crash_point):\n    pass\n")
    result = pytester.runpytest_subprocess()
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*lorch_crash_point needs @pytest.mark.lorch_crashpoints*"])


POINTS = """
import pytest


@pytest.mark.lorch_crashpoints("happy-path", modes=["kill", "torn"], offsets=[6, 7, 10])
def test_point(lorch_crash_point, tmp_path):
    result = lorch_crash_point.explore(tmp_path)
    assert result.verdict == "pass", f"{result.invariant}: {result.detail}"


def test_other():
    pass
"""


COUNT_BASELINES = """
import os

from lorch.crashtest import baseline

_record = baseline.record_baseline


def counted(*args, **kwargs):
    with open(os.environ["BASELINES_LOG"], "a") as f:
        f.write(os.environ.get("PYTEST_XDIST_WORKER", "main") + "\\n")
    return _record(*args, **kwargs)


baseline.record_baseline = counted
"""


# A nested session with its own workers: a hang guard sized for a loaded machine.
@pytest.mark.timeout(600)
def test_crash_points_run_under_xdist(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every worker collects the same points (their ids depend only on the
    # scenario), so xdist can hand them out; the baseline they need for that is
    # recorded once per run, by whichever worker locks it first.
    pytester.makepyfile(test_points=POINTS)
    pytester.makeconftest(COUNT_BASELINES)
    log = pytester.path / "baselines.log"
    monkeypatch.setenv("BASELINES_LOG", str(log))
    result = pytester.runpytest_subprocess("-p", "lorch", "-n", "2", "-v")
    result.assert_outcomes(passed=7)
    out = result.stdout.str()
    assert "[gw0]" in out and "[gw1]" in out
    for name in ("kill@6", "kill@7", "kill@10", "torn@6", "torn@7", "torn@10"):
        assert f"test_point[{name}]" in out
    assert len(log.read_text().split()) == 1, log.read_text()


FAILING = """
import pytest


@pytest.mark.lorch_crashpoints(
    "happy-path", modes=["kill"], offsets=[7], env={"LORCH_PLANT_BUG": "new_key_on_resend"}
)
def test_point(lorch_crash_point, tmp_path):
    result = lorch_crash_point.explore(tmp_path)
    print("KEPT", result.workspace)
    assert result.verdict == "fail"
"""


def test_a_failed_point_keeps_its_workspace_in_tmp_path(pytester: pytest.Pytester) -> None:
    # The point runs in the scratch folder; only a failure is copied to the test's folder.
    pytester.makepyfile(test_points=FAILING)
    result = pytester.runpytest_subprocess("-p", "lorch", "-s")
    result.assert_outcomes(passed=1)
    kept = Path(next(ln.split()[-1] for ln in result.stdout.lines if "KEPT " in ln))
    assert kept.is_relative_to(pytester.path), kept  # the inner test's tmp_path
    assert list((kept / "events").glob("run-*.ndjson"))


SHARDED = """
import pytest


@pytest.mark.lorch_crashpoints("happy-path", modes=["kill", "torn"], offsets=[6, 7, 10])
def test_point(lorch_crash_point):
    print("RAN", lorch_crash_point.point.name)


def test_other():
    pass
"""


def test_shards_split_the_points_without_overlap(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_points=SHARDED)
    ran = []
    for i in (1, 2, 3):
        result = pytester.runpytest_subprocess("-p", "lorch", "-s", "--lorch-shard", f"{i}/3")
        result.assert_outcomes(passed=3, deselected=4)  # two of six points, and test_other
        ran += [ln.split()[-1] for ln in result.stdout.lines if "RAN " in ln]
    assert sorted(ran) == sorted(["kill@6", "kill@7", "kill@10", "torn@6", "torn@7", "torn@10"])
    bad = pytester.runpytest_subprocess("-p", "lorch", "--lorch-shard", "4/3")
    assert bad.ret == 4 and "expected I/N" in bad.stderr.str()
