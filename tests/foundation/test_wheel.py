"""The wheel carries the schemas and scenarios: build it, install it in a fresh
virtual environment, and load a schema and a scenario from there."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow

PROBE = """
import json, sys
from lorch.wire import resources, schemas
from lorch.app.scenarios import load, materialize
assert "_data" in str(resources.schemas_dir()), resources.schemas_dir()
schemas.validator("command")
names = resources.scenario_names()
print(json.dumps({"names": names, "happy": load("happy-path")["task_id"]}))
"""


@pytest.mark.timeout(600)
def test_wheel_installs_with_schemas_and_scenarios(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = dist.glob("lorch-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "lorch/_data/schemas/v1/command.v1.json" in names
    assert "lorch/_data/schemas/v1/fixture.v1.json" in names
    assert "lorch/_data/scenarios/review-loop/scenario.json" in names
    assert "mockagent/agent.py" in names
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=300)
    out = subprocess.run(
        [str(py), "-c", PROBE], capture_output=True, text=True, cwd=tmp_path, check=True
    )
    import json

    body = json.loads(out.stdout)
    bundled = sorted(
        p.name for p in (ROOT / "scenarios").iterdir() if (p / "scenario.json").exists()
    )
    assert body["names"] == bundled and body["happy"] == "T-0042"
    # The installed console scripts run the main job from the wheel alone.
    ws = tmp_path / "demo"
    run = subprocess.run(
        [str(env_dir / "bin" / "lorch"), "run", "--workspace", str(ws)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    assert "[lorch] DONE" in run.stdout
