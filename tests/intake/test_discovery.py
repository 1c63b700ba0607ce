"""Discovery of plan and spec files: what is found, how it scores, and determinism."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lorch.engine import discovery
from lorch.engine.discovery import discover, headings, score
from lorch.wire.canonical import idempotency_key
from tests.conftest import examples


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def paths(root: Path, **kw: int) -> list[str]:
    return [c["path"] for c in discover(root, **kw)["candidates"]]


def test_finds_documents_and_skips_what_is_not_the_users(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "PLAN.md": "# Plan\n",
            "docs/spec.rst": "Spec\n====\n",
            "notes.txt": "hello\n",
            "src/main.py": "print()\n",
            ".hidden/plan.md": "# Plan\n",
            ".plan.md": "# Plan\n",
            "node_modules/pkg/plan.md": "# Plan\n",
            "docs/node_modules/plan.md": "# Plan\n",
            ".git/plan.md": "# Plan\n",
            "events/plan.md": "# Plan\n",
            "state/plan.md": "# Plan\n",
            "transcripts/run.txt": "x\n",
            "reviews/plan.md": "# Plan\n",
        },
    )
    assert sorted(paths(tmp_path)) == ["PLAN.md", "docs/spec.rst", "notes.txt"]


def test_symlinks_are_not_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    write(outside, {"plan.md": "# Plan\n"})
    ws = tmp_path / "ws"
    write(ws, {"README.md": "# Readme\n"})
    (ws / "docs").symlink_to(outside)
    (ws / "loop").symlink_to(ws)
    (ws / "PLAN.md").symlink_to(outside / "plan.md")
    assert paths(ws) == ["README.md"]


def test_ranking_prefers_plans_near_the_top(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "README.md": "# Readme\n",
            "PLAN.md": "# Authentication plan\n## Steps\n",
            "docs/plan_v2.md": "# Plan v2\n",
            "specs/nested/deeper/auth-spec.md": "# Auth\n",
            "proposal.txt": "Proposal\n--------\n",
            "docs/explanation.md": "# How it works\n",
        },
    )
    got = discover(tmp_path)["candidates"]
    order = [c["path"] for c in got]
    assert order[0] == "PLAN.md"
    assert order.index("docs/plan_v2.md") < order.index("proposal.txt")
    assert order.index("proposal.txt") < order.index("README.md")
    # "explanation" does not contain the token "plan" as a word part.
    assert score("docs/explanation.md", []) == score("docs/readme.md", [])
    assert got[0]["headings"] == ["Authentication plan", "Steps"]


def test_score_parts() -> None:
    d = discovery
    assert score("notes.md", []) == d.BASE
    assert score("PLAN.md", []) == d.BASE + d.NAME_TOKENS["plan"]
    assert score("docs/notes.md", []) == d.BASE + d.LOCATION - d.DEPTH
    assert score("a/b/notes.md", []) == d.BASE - 2 * d.DEPTH
    assert score("notes.md", ["Plan", "Spec", "Roadmap", "Proposal"]) == d.BASE + 3 * d.HEADING
    assert score("plan-spec.md", []) == d.BASE + d.NAME_TOKENS["plan"]  # the best token only


def test_headings_of_markdown_and_rst() -> None:
    md = "intro\n# One\n```\n# not a heading\n```\n  ## Two ##\n#nospace\n"
    assert headings(md) == ["One", "Two"]
    rst = "Title\n=====\n\ntext\n\nSection\n-------\n\n=====\n"
    assert headings(rst) == ["Title", "Section"]
    many = "".join(f"# H{i}\n" for i in range(20))
    assert len(headings(many)) == discovery.MAX_HEADINGS


def test_limit_keeps_the_best(tmp_path: Path) -> None:
    write(tmp_path, {f"n{i:02}.md": "x\n" for i in range(15)} | {"plan.md": "x\n"})
    got = paths(tmp_path, limit=3)
    assert got == ["plan.md", "n00.md", "n01.md"]


def test_binary_content_is_read_without_error(tmp_path: Path) -> None:
    (tmp_path / "plan.md").write_bytes(b"# Pl\xffan\n\x00\x80\n")
    (c,) = discover(tmp_path)["candidates"]
    assert c["path"] == "plan.md" and c["headings"] == ["Pl\ufffdan"]


# -- properties --------------------------------------------------------------

NAMES = st.sampled_from(
    ["plan", "PLAN", "spec", "notes", "proposal", "readme", "roadmap", "x", "design", "todo"]
)
EXTS = st.sampled_from([".md", ".rst", ".txt", ".py", ".json"])
DIRS = st.sampled_from(["docs", "specs", "plans", "src", "a", "node_modules", ".hidden", "state"])
HEADS = st.lists(
    st.sampled_from(["# Plan", "# Overview", "## Spec", "Title\n=====", "# Roadmap", "text"]),
    max_size=4,
)
TREES = st.dictionaries(
    st.builds(
        lambda dirs, name, ext: "/".join([*dirs, name + ext]),
        st.lists(DIRS, max_size=3),
        NAMES,
        EXTS,
    ),
    HEADS.map(lambda hs: "\n".join(hs) + "\n"),
    max_size=12,
)


FIXTURE = [HealthCheck.function_scoped_fixture]


def _clean_tree(files: dict[str, str]) -> dict[str, str]:
    """Drop paths where a file would sit where another path needs a directory."""
    out: dict[str, str] = {}
    for rel in sorted(files):
        parents = {"/".join(rel.split("/")[:i]) for i in range(1, rel.count("/") + 1)}
        if parents & out.keys() or any(o.startswith(rel + "/") for o in out):
            continue
        out[rel] = files[rel]
    return out


def _key(metadata: object) -> str:
    return idempotency_key("intake", "intake", "snap-000000000000", {"d": metadata}, [])


@settings(max_examples=examples(40), deadline=None, suppress_health_check=FIXTURE)
@given(files=TREES, seed=st.integers(0, 2**16))
def test_same_tree_same_metadata_whatever_the_order(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, str], seed: int
) -> None:
    files = _clean_tree(files)
    a = tmp_path_factory.mktemp("a")
    b = tmp_path_factory.mktemp("b")
    write(a, files)
    # The same tree made in another order (directory order on disk differs).
    shuffled = list(files.items())
    random.Random(seed).shuffle(shuffled)
    write(b, dict(shuffled))
    first = discover(a)
    assert discover(b) == first
    assert _key(discover(b)) == _key(first)
    # Sorted by score, then path; every candidate's score is its own function.
    cands = first["candidates"]
    assert cands == sorted(cands, key=lambda c: (-c["score"], c["path"]))
    for c in cands:
        assert c["score"] == score(c["path"], c["headings"])
        assert c["path"].endswith(discovery.EXTENSIONS)
    shutil.rmtree(a)
    shutil.rmtree(b)


@settings(max_examples=examples(25), deadline=None, suppress_health_check=FIXTURE)
@given(files=TREES, seed=st.integers(0, 2**16))
def test_independent_of_directory_listing_order(
    tmp_path_factory: pytest.TempPathFactory, files: dict[str, str], seed: int
) -> None:
    root = tmp_path_factory.mktemp("t")
    write(root, _clean_tree(files))
    expected = discover(root)
    real_scandir = os.scandir
    rng = random.Random(seed)

    class Shuffled:
        def __init__(self, path: object) -> None:
            self.inner = real_scandir(path)  # type: ignore[call-overload]
            self.entries = list(self.inner)
            rng.shuffle(self.entries)

        def __enter__(self) -> list[os.DirEntry[str]]:
            return self.entries

        def __exit__(self, *exc: object) -> None:
            self.inner.close()

    mp = pytest.MonkeyPatch()
    mp.setattr(discovery.os, "scandir", Shuffled)
    try:
        assert discover(root) == expected
    finally:
        mp.undo()
    shutil.rmtree(root)


@given(
    name=NAMES,
    depth=st.integers(0, 3),
    heads=st.lists(st.sampled_from(["Plan", "Overview", "Spec"]), max_size=5),
)
def test_score_monotone_in_depth_and_headings(name: str, depth: int, heads: list[str]) -> None:
    path = "/".join(["a"] * depth + [name + ".md"])
    deeper = "a/" + path
    assert score(deeper, heads) == score(path, heads) - discovery.DEPTH
    assert score(path, [*heads, "Plan"]) >= score(path, heads)
