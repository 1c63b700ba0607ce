"""``lorch crashtest``: reports, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e


def crashtest(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lorch", "crashtest", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_reports(tmp_path: Path) -> None:
    j, x = tmp_path / "r.json", tmp_path / "r.xml"
    r = crashtest(
        "happy-path",
        "--modes",
        "kill,torn",
        "--offsets",
        "6-7",
        "--jobs",
        "2",
        "--json",
        str(j),
        "--junit",
        str(x),
    )
    assert r.returncode == 0, r.stderr
    assert "4 points explored, 4 passed, 0 failed" in r.stdout
    assert "command implement" in r.stdout and "PASS" in r.stdout
    body = json.loads(j.read_text())
    # 17 records, and the verdicts of the reviewer and the spec maintainer captured.
    assert body["passed"] == 4 and body["failed"] == 0 and body["baseline_records"] == 19
    suite = ET.parse(x).getroot()
    assert suite.tag == "testsuite" and suite.get("tests") == "4" and suite.get("failures") == "0"


@pytest.mark.parametrize(
    ("args", "text"),
    [
        (["no-such-scenario"], "unknown scenario 'no-such-scenario'"),
        (["happy-path", "--modes", "kill,meteor"], "unknown crash mode 'meteor'"),
        (["happy-path", "--offsets", "99"], "offset 99 is beyond the ledger"),
        (["happy-path", "--offsets", "x-y"], "--offsets"),
    ],
)
def test_bad_input(args: list[str], text: str) -> None:
    r = crashtest(*args)
    assert r.returncode == 2, r.stderr
    assert text in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_scenario_whose_baseline_fails(tmp_path: Path) -> None:
    import shutil

    from lorch.wire.resources import scenarios_dir

    bad = tmp_path / "bad"
    shutil.copytree(scenarios_dir() / "tests-failing", bad)
    meta = json.loads((bad / "scenario.json").read_text())
    meta["expected"]["status"] = "completed"
    (bad / "scenario.json").write_text(json.dumps(meta))
    r = crashtest(str(bad), "--offsets", "1")
    assert r.returncode == 2 and "baseline run 1 ended failed" in r.stderr


def test_failed_point_keeps_workspace_and_names_reproducer(tmp_path: Path) -> None:
    from lorch.crashtest import Options
    from lorch.crashtest import crashtest as run
    from lorch.crashtest.report import reproduce, table

    keep = tmp_path / "kept"
    keep.mkdir()
    # Planted bugs reach lorch only through the library's test-only extra_env.
    opts = Options(jobs=1, keep_failed=keep, extra_env={"LORCH_PLANT_BUG": "no_torn_cut"})
    _, results = run("happy-path", ["torn"], [7], opts)
    (r,) = results
    assert r.verdict == "fail" and r.invariant == "ledger_replays"
    assert "FAIL" in table(results) and "ledger_replays" in table(results)
    assert reproduce("happy-path", r) == "lorch crashtest happy-path --modes torn --offsets 7"
    assert r.workspace is not None and (Path(r.workspace) / "lorch.json").exists()


def test_external_killer_mode() -> None:
    from lorch.crashtest import Options
    from lorch.crashtest import crashtest as run

    _, results = run("happy-path", ["external"], [1, 2, 3], Options(jobs=2, seed=11))
    assert [r.point.mode for r in results] == ["external"] * 3
    assert all(r.verdict == "pass" for r in results), [(r.invariant, r.detail) for r in results]
