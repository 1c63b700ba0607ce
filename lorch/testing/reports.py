"""Report files of lorch's test tools (crash harness, conformance kit): JSON and JUnit XML.

Each tool turns its results into a JSON body and a list of :class:`Case`; the
files are written here, atomically (DESIGN.md §5.7), in one format for both.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lorch.store.atomic import atomic_write_bytes

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class Case:
    """One JUnit test case: ``message`` says why it failed or was skipped, ``text`` more."""

    classname: str
    name: str
    status: Status
    message: str = ""
    text: str = ""
    seconds: float | None = None


def write_json(path: Path, body: Mapping[str, object]) -> None:
    atomic_write_bytes(path, (json.dumps(body, indent=2) + "\n").encode())


def write_junit(path: Path, suite: str, cases: Sequence[Case], seconds: float) -> None:
    root = ET.Element(
        "testsuite",
        name=suite,
        tests=str(len(cases)),
        failures=str(sum(c.status == "fail" for c in cases)),
        skipped=str(sum(c.status == "skip" for c in cases)),
        time=f"{seconds:.3f}",
    )
    for c in cases:
        attrs = {"classname": c.classname, "name": c.name}
        if c.seconds is not None:
            attrs["time"] = f"{c.seconds:.3f}"
        case = ET.SubElement(root, "testcase", attrs)
        if c.status == "fail":
            ET.SubElement(case, "failure", message=c.message).text = c.text or None
        elif c.status == "skip":
            ET.SubElement(case, "skipped", message=c.message)
    atomic_write_bytes(path, ET.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n")
