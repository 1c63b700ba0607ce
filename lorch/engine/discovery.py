"""Plan and spec discovery for intake (MASTER-SPEC §10.4), deterministic by construction.

lorch looks for the files a user most likely means by "the plan" before it asks
the orchestration agent anything, and hands the agent the result as
``inputs.discovery_metadata``. The same tree always gives the same metadata (and
so the same idempotency key for the ``intake`` command): directory entries are
sorted before use, scores are integers, and ties are broken by path.

Algorithm ``lorch-heuristic/1``:

- walk ``.``, ``docs``, ``specs`` and ``plans`` (recursively, at most
  ``MAX_DEPTH`` directories deep, never through a symlink) for ``.md``, ``.rst``
  and ``.txt`` files, skipping hidden entries, ``.git``, ``node_modules`` and
  lorch's own directories;
- score each file: ``BASE``, plus the best of the name tokens in ``NAME_TOKENS``,
  plus ``LOCATION`` when it lives under ``docs/``, ``specs/`` or ``plans/``, plus
  ``HEADING`` for each of its first headings that names a token (at most
  ``MAX_HEADINGS_SCORED``), minus ``DEPTH`` per directory level;
- keep the ``limit`` best, by score (highest first) then path.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path
from typing import TypedDict

from lorch.store.layout import GIT_DIR, LORCH_DIRS, VERDICT_DIRS

STRATEGY = "lorch-heuristic/1"
SEARCH_PATHS = (".", "docs", "specs", "plans")
EXTENSIONS = (".md", ".rst", ".txt")
# Never searched: version control, dependencies, and what lorch itself writes.
IGNORED = frozenset({GIT_DIR, "node_modules", *LORCH_DIRS, *VERDICT_DIRS.values()})
LOCATIONS = frozenset({"docs", "specs", "plans"})
NAME_TOKENS = {"plan": 40, "spec": 30, "proposal": 25, "roadmap": 20}
BASE = 10
LOCATION = 3
HEADING = 5
DEPTH = 5
MAX_DEPTH = 4
MAX_HEADINGS = 5  # headings reported per candidate
MAX_HEADINGS_SCORED = 3
MAX_HEADING_CHARS = 120
HEAD_BYTES = 65_536  # how much of a file is read for its headings
DEFAULT_LIMIT = 10

_TOKEN_RE = re.compile(r"[a-z]+")
_MD_HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$")
_RST_UNDERLINE = re.compile(r"^([=\-`:'\"~^_*+#<>])\1{2,}[ \t]*$")


class Candidate(TypedDict):
    path: str
    score: int
    headings: list[str]


class Metadata(TypedDict):
    strategy: str
    search_paths: list[str]
    candidates: list[Candidate]


def _tokens(text: str) -> set[str]:
    """Words of ``text``, lower case, split at anything not a letter (PLAN_v2 → plan, v)."""
    words = set(_TOKEN_RE.findall(text.lower()))
    # Plurals and compounds count too ("plans", "specification", "myplan"), but
    # not a token in the middle of a word ("explanation").
    return {
        t for t in NAME_TOKENS if any(w.startswith(t) or w.endswith((t, t + "s")) for w in words)
    }


def headings(text: str) -> list[str]:
    """The first headings of a Markdown, reStructuredText or plain-text document."""
    found: list[str] = []
    lines = text.split("\n")
    fence = False
    for i, raw in enumerate(lines):
        line = raw.rstrip("\r")
        if line.lstrip().startswith(("```", "~~~")):
            fence = not fence
            continue
        if fence:
            continue
        title = None
        m = _MD_HEADING.match(line)
        if m:
            title = m.group(1)
        elif (
            i + 1 < len(lines)
            and line.strip()
            and _RST_UNDERLINE.match(lines[i + 1].rstrip("\r"))
            and len(lines[i + 1].rstrip()) >= len(line.strip())
            and not _RST_UNDERLINE.match(line)
        ):
            title = line
        if title is not None:
            title = " ".join(title.split())[:MAX_HEADING_CHARS]
            if title:
                found.append(title)
                if len(found) == MAX_HEADINGS:
                    break
    return found


def score(path: str, heads: list[str]) -> int:
    """The score of the file at relative posix ``path`` with headings ``heads``."""
    parts = path.split("/")
    name = parts[-1].rsplit(".", 1)[0]
    named = _tokens(name)
    points = BASE + max((NAME_TOKENS[t] for t in named), default=0)
    if any(p in LOCATIONS for p in parts[:-1]):
        points += LOCATION
    points += HEADING * min(sum(1 for h in heads if _tokens(h)), MAX_HEADINGS_SCORED)
    points -= DEPTH * (len(parts) - 1)
    return points


def _read_head(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        data = os.read(fd, HEAD_BYTES)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return data.decode("utf-8", "replace")


def _walk(root: Path, rel: str, depth: int, out: set[str]) -> None:
    """Collect candidate files below ``root/rel`` into ``out`` (relative posix paths)."""
    base = root if rel == "." else root / rel
    try:
        with os.scandir(base) as it:
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for entry in entries:
        name = entry.name
        # Lorch's own directories sit at the top; dependencies anywhere.
        if name.startswith(".") or name == "node_modules" or (rel == "." and name in IGNORED):
            continue
        child = name if rel == "." else f"{rel}/{name}"
        try:
            if entry.is_symlink():
                continue  # a link may lead out of the workspace, or in a circle
            if entry.is_dir():
                if depth < MAX_DEPTH:
                    _walk(root, child, depth + 1, out)
            elif entry.is_file() and name.lower().endswith(EXTENSIONS):
                out.add(child)
        except OSError:
            continue


def discover(root: Path, *, limit: int = DEFAULT_LIMIT) -> Metadata:
    """The discovery metadata of the workspace at ``root``."""
    found: set[str] = set()
    for rel in SEARCH_PATHS:
        top = root / rel
        if rel != "." and (top.is_symlink() or not top.is_dir()):
            continue
        start_depth = 0 if rel == "." else 1
        _walk(root, rel, start_depth, found)
    scored: list[Candidate] = []
    for path in found:
        heads = headings(_read_head(root / path))
        scored.append({"path": path, "score": score(path, heads), "headings": heads})
    scored.sort(key=lambda c: (-c["score"], c["path"]))
    return {
        "strategy": STRATEGY,
        "search_paths": list(SEARCH_PATHS),
        "candidates": scored[:limit],
    }
