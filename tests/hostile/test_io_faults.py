"""A disk that fails under lorch: one line, never a traceback, and a run that
resumes once the disk is fixed (issue 14, point 5).

``LORCH_IO_FAULT=ERRNO:PATH-TEXT[:N]`` (lorch/store/failpoint.py) fails lorch's own
writes to matching paths from the N-th on, as a full, read-only or broken disk
would, at every place lorch writes.
"""

from __future__ import annotations

import errno
import os

import pytest

from .conftest import assert_clean_exit, run_ids

pytestmark = pytest.mark.e2e

ERRNOS = ("ENOSPC", "EROFS", "EACCES", "EIO")
# Where lorch writes, and a fault that hits it after the run has started (so
# there is a run to resume). N counts writes to matching paths.
SITES = {
    "ledger": "events/:6",
    "run-state": "state/run.json",
    "index": "state/index.json",
    "receipts": "receipts/",
    "snapshot": "snapshots/",
    "transcript": "transcripts/",
    "logs": "logs/builder/",
    "lock": "state/lock",
}
QUICK = {  # one errno per site in the quick loop; the full matrix is marked slow
    "ledger": "ENOSPC",
    "run-state": "EROFS",
    "index": "EACCES",
    "receipts": "EIO",
    "snapshot": "ENOSPC",
    "transcript": "EROFS",
    "logs": "EIO",
    "lock": "EACCES",
}


def cases() -> list[object]:
    out = []
    for site in SITES:
        for name in ERRNOS:
            marks = () if QUICK[site] == name else (pytest.mark.slow,)
            out.append(pytest.param(site, name, marks=marks, id=f"{site}-{name}"))
    return out


@pytest.mark.parametrize(("site", "name"), cases())
def test_one_line_then_resumable(site: str, name: str, scenario, lorch) -> None:  # type: ignore[no-untyped-def]
    ws = scenario("happy-path")
    spec = f"{name}:{SITES[site]}"
    r = lorch("run", "--workspace", str(ws), env={"LORCH_IO_FAULT": spec})
    assert_clean_exit(r, 1)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("lorch: ")
    assert os.strerror(getattr(errno, name)) in lines[0], lines[0]
    if site == "lock":
        assert "state/lock" in lines[0]
        assert not (ws / "events").exists() or not list((ws / "events").iterdir())
        r = lorch("run", "--workspace", str(ws))
    else:
        assert "lorch resume" in lines[0], lines[0]
        r = lorch("resume", "--workspace", str(ws))
    assert_clean_exit(r)
    v = lorch("verify", "--workspace", str(ws), "--run", run_ids(ws)[-1])
    assert v.returncode == 0, v.stdout
