"""The pytest plugin, tested with pytester; the example suite from the docs runs here."""

from __future__ import annotations

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
