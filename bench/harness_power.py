"""How many realistic bugs does the crash harness catch? A mutation score.

Each mutant is a small, realistic change to lorch (ledger, atomic files,
receipts, runner, workflow, resume), applied to a temporary copy of the source
tree; the crash harness alone (``lorch crashtest``, no unit test) then runs on
that copy. A mutant is caught when the harness exits non-zero: a failed point
(exit 1), or a baseline that does not end as its scenario says (exit 2).
Equivalent mutants (no observable difference a crash could reveal) are named
and excluded from the score.

Run: python bench/harness_power.py [--only NAME,...] [--jobs N]
     python bench/harness_power.py --check-patterns  (only: does every mutant still apply?)
Goal: 100 % of the non-equivalent mutants caught.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The crash runs each mutant gets, cheapest first; the first that fails it stops it.
LIVE = ["--modes", "kill,torn,agent,powerloss,double,corrupt"]
PLANS: dict[str, list[list[str]]] = {
    "default": [["happy-path", *LIVE]],
    "loop": [["review-loop", "--modes", "kill,torn,powerloss"]],
    "orphans": [["slow-agents", "--modes", "kill", "--offsets", "6-12"]],
    "lie": [["artifact-lie", "--modes", "kill", "--offsets", "1"]],
    "powercut": [["happy-path", "--modes", "powercut", "--cuts", "lost"]],
}


@dataclass(frozen=True)
class Mutant:
    name: str
    area: str
    edits: tuple[tuple[str, str], ...]  # (old, new): old must occur exactly once in lorch/
    plan: str = "default"
    equivalent: str = ""  # why no crash can tell it apart, when it is equivalent

    def __post_init__(self) -> None:
        assert self.plan in PLANS, self.plan


MUTANTS = [
    # -- the ledger ---------------------------------------------------------------
    Mutant(
        "ledger: append does not fsync, still counts the bytes as synced",
        "ledger",
        (
            (
                "                if not self._skip_fsync:\n                    os.fsync(self._fd)\n"
                "                self.synced_size = self.size",
                "                self.synced_size = self.size",
            ),
        ),
        "powercut",
    ),
    Mutant(
        "ledger: a torn tail is not cut before appending",
        "ledger",
        (("                    f.truncate(result.good_bytes)\n", "                    pass\n"),),
    ),
    Mutant(
        "ledger: a bad middle line is skipped instead of stopping",
        "ledger",
        (
            (
                "            if opened is None:\n                raise _forged(path, lineno, raw)\n"
                "            body, prev = opened\n"
                "            yield _Line(lineno, offset, raw, _check(path, lineno, body, validate), prev)\n",
                "            if opened is None:\n                held = item\n                continue\n"
                "            body, prev = opened\n"
                "            try:\n                record = _check(path, lineno, body, validate)\n"
                "            except LedgerError:\n                held = item\n                continue\n"
                "            yield _Line(lineno, offset, raw, record, prev)\n",
            ),
        ),
    ),
    Mutant(
        "ledger: a new ledger's name is not made durable (no directory fsync)",
        "ledger",
        (
            (
                "        if torn is None and records == 0:\n            fsync_dir(path.parent)\n",
                "",
            ),
        ),
        "powercut",
    ),
    Mutant(
        "ledger: a torn tail is cut one line too far (the last good record lost)",
        "ledger",
        (
            (
                "            return Scan(count, good, torn, line.chain)\n",
                "            return Scan(max(0, count - 1), max(0, good - 1), torn, line.chain)\n",
            ),
        ),
    ),
    # -- atomic files ---------------------------------------------------------------
    Mutant(
        "atomic: the temp file is renamed without an fsync of its data",
        "atomic",
        (
            (
                "            _write_all(fd, data)\n        os.fsync(fd)\n",
                "            _write_all(fd, data)\n",
            ),
        ),
        "powercut",
    ),
    Mutant(
        "atomic: no directory fsync after the rename",
        "atomic",
        (
            (
                "            raise\n        _sync(dfd, target.parent)\n",
                "            raise\n",
            ),
        ),
        "powercut",
        equivalent="run.json, the index, manifests and transcripts are rebuilt from the ledger "
        "on resume: losing one of their renames loses nothing",
    ),
    Mutant(
        "atomic: receipts linked without an fsync of their data",
        "atomic",
        (("        for fd in fds:\n            os.fsync(fd)\n", ""),),
        "powercut",
    ),
    Mutant(
        "atomic: no directory fsync after linking receipts",
        "atomic",
        (
            (
                "        for parent in sorted(dirs):\n            _sync(dirs[parent], parent)\n",
                "",
            ),
        ),
        "powercut",
    ),
    # -- receipts -------------------------------------------------------------------
    Mutant(
        "receipts: a taken step number is overwritten",
        "receipts",
        (
            (
                "os.link(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=dfd, follow_symlinks=False)",
                "os.replace(tmp, target.name, src_dir_fd=dfd, dst_dir_fd=dfd)",
            ),
        ),
        # One writer never meets a taken number, so no outcome shows it; the
        # recorded system calls do (a rename onto a receipt name).
        "powercut",
    ),
    Mutant(
        "receipts: the next step number is the last one taken",
        "receipts",
        # Not equivalent after all: the first receipt would be step 0, which the schema refuses.
        (("    return max(existing, default=0) + 1\n", "    return max(existing, default=0)\n"),),
    ),
    Mutant(
        "receipts: the writer is hooked up only after the replay",
        "resume",
        (
            (
                "        for record in ledger.read(path):\n            self._fold(record)\n",
                "        for record in ledger.read(path):\n            self.state.fold(record)\n"
                "        if self.state.run_id:\n"
                "            self.derived.start(self.state.run_id, self.state.task_id)\n",
            ),
        ),
    ),
    # -- runner / engine --------------------------------------------------------------
    Mutant(
        "runner: a command is sent before its record is fsynced",
        "runner",
        (('sync=not self.faults.planted_bug("skip_command_fsync")', "sync=False"),),
    ),
    Mutant(
        "runner: artifact hashes are not compared",
        "runner",
        (
            (
                '        if sha != art.get("sha256") or size != art.get("size"):',
                "        if False:",
            ),
        ),
        "lie",
    ),
    Mutant(
        "runner: only the artifact's size is compared",
        "runner",
        (
            (
                '        if sha != art.get("sha256") or size != art.get("size"):',
                '        if size != art.get("size"):',
            ),
        ),
        "lie",
    ),
    Mutant(
        "runner: a resend gets a fresh key",
        "runner",
        (
            (
                '        if step.resend and self.faults.planted_bug("new_key_on_resend"):',
                "        if step.resend:",
            ),
        ),
    ),
    Mutant(
        "runner: a receipt is written as soon as the terminal event arrives, before the ledger",
        "receipts",
        (('            and self.faults.planted_bug("receipt_before_ledger")\n', ""),),
    ),
    # -- workflow -----------------------------------------------------------------
    Mutant(
        "workflow: a resend gets the next attempt's number and a new correlation id",
        "workflow",
        (
            (
                '        "retry": {**command["retry"], "attempt": attempt},\n    }',
                '        "retry": {**command["retry"], "attempt": attempt},\n'
                '        "correlation_id": str(command["correlation_id"]) + "-r",\n    }',
            ),
        ),
    ),
    Mutant(
        "workflow: a pending command with an answer is sent again instead of checked",
        "workflow",
        (
            (
                "        if p.terminal is not None:\n            return Check(p)\n",
                "",
            ),
        ),
    ),
    Mutant(
        "workflow: the review round cap is off by one",
        "workflow",
        (("    if review_round > max_rounds:", "    if review_round >= 3:"),),
        "loop",
    ),
    Mutant(
        "workflow: changes requested by review go to the spec maintainer",
        "workflow",
        (
            (
                '_changes(state, answer, fresh, "review",',
                '_changes(state, answer, fresh, "spec",',
            ),
        ),
        "loop",
        equivalent="the reason is an input the mock agents ignore; keys change consistently in "
        "baseline and crash runs alike",
    ),
    # -- resume -------------------------------------------------------------------
    Mutant(
        "resume: orphaned agents of the crashed run are not ended",
        "resume",
        (
            (
                '        killed = [] if planted("no_orphan_kill") else end_orphans(state)',
                "        killed = []",
            ),
        ),
        "orphans",
    ),
    Mutant(
        "resume: a new snapshot is taken instead of the recorded one",
        "resume",
        (
            (
                "        if state.snapshot_id is None:\n            recorder.take_snapshot()",
                "        if True:\n            recorder.take_snapshot()",
            ),
        ),
    ),
    Mutant(
        "resume: a resumed run is re-derived from an empty state (replay skipped)",
        "resume",
        (
            (
                "        for record in ledger.read(path):\n            self._fold(record)",
                "        for record in list(ledger.read(path))[:1]:\n            self._fold(record)",
            ),
        ),
    ),
]


def sources() -> dict[Path, str]:
    return {p: p.read_text() for p in sorted((ROOT / "lorch").rglob("*.py"))}


def locate(m: Mutant, files: dict[Path, str]) -> list[tuple[Path, str, str]]:
    """Where each edit applies: exactly one place in lorch/ (else a ValueError)."""
    out = []
    for old, new in m.edits:
        hits = [p for p, text in files.items() if text.count(old) == 1]
        many = [p for p, text in files.items() if text.count(old) > 1]
        if len(hits) != 1 or many:
            raise ValueError(
                f"mutant {m.name!r}: {old.strip()[:60]!r} found in {len(hits)} files "
                f"(and more than once in {len(many)}): the mutant list must follow the source"
            )
        out.append((hits[0], old, new))
    return out


def apply(m: Mutant, dest: Path) -> None:
    """A copy of the source tree in ``dest`` with the mutant applied."""
    for part in ("lorch", "mockagent", "schemas", "scenarios"):
        shutil.copytree(
            ROOT / part, dest / part, ignore=shutil.ignore_patterns("__pycache__", "*.pyc")
        )
    files = sources()
    for path, old, new in locate(m, files):
        target = dest / path.relative_to(ROOT)
        target.write_text(target.read_text().replace(old, new, 1))


def run_plan(m: Mutant, tree: Path, jobs: int) -> tuple[bool, str]:
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    for args in PLANS[m.plan]:
        proc = subprocess.run(
            [sys.executable, "-m", "lorch", "crashtest", *args, "--jobs", str(jobs), "-x"],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
            cwd=tree,
        )
        if proc.returncode == 2 and "baseline" not in proc.stderr:
            # A usage error is the bench's own mistake, never a catch.
            raise SystemExit(f"mutant {m.name!r}: {' '.join(args)}: {proc.stderr.strip()}")
        if proc.returncode != 0:
            out = proc.stdout + proc.stderr
            fail = next((ln for ln in out.splitlines() if " FAIL " in ln), "")
            why = (
                fail.split("FAIL", 1)[-1].strip() or (proc.stderr.strip().splitlines() or [""])[-1]
            )
            return True, f"{args[0]}: {why}"[:160]
    return False, ""


def check_patterns(picked: list[Mutant]) -> int:
    """Print where each mutant applies; 1 when one of them no longer does."""
    files = sources()
    broken = 0
    for m in picked:
        n = f"{MUTANTS.index(m) + 1:2d}" if m in MUTANTS else " -"
        try:
            where = sorted({str(path.relative_to(ROOT)) for path, _, _ in locate(m, files)})
        except ValueError as e:
            broken += 1
            print(f"{n}. NO MATCH: {e}")
            continue
        print(f"{n}. [{m.area}] {m.name}: {', '.join(where)}")
    print(f"{len(picked) - broken}/{len(picked)} mutants apply, each edit matching exactly once")
    return 1 if broken else 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="", help="comma-separated mutant numbers (1-based)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--check-patterns",
        action="store_true",
        help="only check that each mutant's edits match exactly once in lorch/, then exit",
    )
    a = ap.parse_args()
    picked = [MUTANTS[int(i) - 1] for i in a.only.split(",")] if a.only else MUTANTS
    if a.check_patterns:
        raise SystemExit(check_patterns(picked))
    started = time.monotonic()
    caught, survived, equivalent = [], [], []
    for m in picked:
        n = MUTANTS.index(m) + 1
        with tempfile.TemporaryDirectory(prefix="lorch-mutant-") as tmp:
            apply(m, Path(tmp))
            t0 = time.monotonic()
            hit, why = run_plan(m, Path(tmp), a.jobs)
        dt = time.monotonic() - t0
        if m.equivalent:
            equivalent.append(m)
            anyway = f"caught anyway, by {why}" if hit else "survives"
            verdict = f"equivalent ({anyway}): {m.equivalent}"
        elif hit:
            caught.append(m)
            verdict = f"CAUGHT by {why}"
        else:
            survived.append(m)
            verdict = "SURVIVED"
        print(f"{n:2d}. [{m.area}] {m.name}: {verdict} ({dt:.0f} s)", flush=True)
    scored = len(caught) + len(survived)
    rate = 100.0 * len(caught) / scored if scored else 0.0
    print(
        f"score: {len(caught)}/{scored} non-equivalent mutants caught ({rate:.0f} %), "
        f"{len(equivalent)} equivalent excluded, in {time.monotonic() - started:.0f} s"
    )
    for m in survived:
        print(f"survivor: {m.name}")
    print("goal: 100 % caught by the crash harness alone")


if __name__ == "__main__":
    main()
