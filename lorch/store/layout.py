"""Where everything lorch keeps lives in a workspace (DESIGN.md §4), and which run is meant.

Every path lorch writes or reads back is built here, from the workspace folder:

    events/<run>.ndjson         the ledger of each run (the source of truth)
    state/                      run.json, index.json, lock, ledger.key, heads/,
                                checkpoints.git/, homes/<role>/, backups/
    receipts/<task>/            one receipt per accepted step
    snapshots/                  snapshot manifests
    logs/<role>/<run>.ndjson    each agent's log
    transcripts/<run>.txt       the human transcript

plus ``lorch.json`` (the configuration) and the verdict folders the reviewer
(``reviews/``) and the spec maintainer (``spec_notes/``) write. Nothing here
reads or writes a file except :func:`runs`, which lists the ledgers.
"""

from __future__ import annotations

from pathlib import Path

# lorch's own directories at the top of a workspace: never part of the work, a
# snapshot or a checkpoint; hidden from agents; never touched by a rollback.
LORCH_DIRS = ("events", "state", "receipts", "snapshots", "logs", "transcripts")
CONFIG = "lorch.json"
# lorch's own files at the top of a workspace (lorch.json holds secrets).
LORCH_FILES = (CONFIG,)
# git's directory, at any depth (hooks, config: what runs when git does).
GIT_DIR = ".git"
# The verdict directory of each role that writes one; no other role writes there.
VERDICT_DIRS = {"reviewer": "reviews", "spec_maintainer": "spec_notes"}

EVENTS = Path("events")
STATE = Path("state")
RECEIPTS = Path("receipts")
LOGS = Path("logs")
TRANSCRIPTS = Path("transcripts")
RUN_JSON = STATE / "run.json"
INDEX_JSON = STATE / "index.json"
LOCK = STATE / "lock"
LEDGER_KEY = STATE / "ledger.key"
HEADS = STATE / "heads"
CHECKPOINT_STORE = STATE / "checkpoints.git"
HOMES = STATE / "homes"
BACKUPS = STATE / "backups"
LEDGER_SUFFIX = ".ndjson"
RUN_PATTERN = "run-*" + LEDGER_SUFFIX


def ledger(workspace: Path, run_id: str) -> Path:
    """The ledger of ``run_id``: ``events/<run_id>.ndjson``."""
    return workspace / EVENTS / f"{run_id}{LEDGER_SUFFIX}"


def ledger_rel(run_id: str) -> str:
    """The ledger of ``run_id``, relative to the workspace (as records name it)."""
    return f"{EVENTS}/{run_id}{LEDGER_SUFFIX}"


def head(ledger_path: Path) -> Path:
    """Where the chain head of the ledger at ``ledger_path`` is kept (``state/heads/``)."""
    return ledger_path.parent.parent / HEADS / f"{ledger_path.stem}.json"


def receipts(workspace: Path, task_id: str | None = None) -> Path:
    return workspace / RECEIPTS / task_id if task_id is not None else workspace / RECEIPTS


def transcript(workspace: Path, run_id: str) -> Path:
    return workspace / TRANSCRIPTS / f"{run_id}.txt"


def agent_log(log_dir: Path, role: str, run_id: str) -> Path:
    """An agent's log under ``log_dir`` (``logs/`` unless the caller chose another)."""
    return log_dir / role / f"{run_id}{LEDGER_SUFFIX}"


def runs(workspace: Path) -> list[Path]:
    """The ledgers of the workspace's runs, newest first.

    The one rule for "which run": a run id starts with the second it was
    started in, so ids sort by start; two runs started in the same second
    differ only in their random suffix, and the one written last comes first.
    """
    events = workspace / EVENTS
    if not events.is_dir():
        return []
    return sorted(
        events.glob(RUN_PATTERN),
        key=lambda p: (p.stem[:19], p.stat().st_mtime_ns),
        reverse=True,
    )


def latest_run(workspace: Path) -> str | None:
    """The run id of the newest run (:func:`runs`), or None when there is none."""
    found = runs(workspace)
    return found[0].stem if found else None
