"""Fixtures: loading, validation, response selection, templates, role defaults.

Loaded at the start of every agent given ``--script``: a fixture that is valid
costs no more than reading it and one call of the generated validator (no
pathlib, typing, jsonschema or difflib: those explain a rejected fixture).
"""

from __future__ import annotations

import json
import os
import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

ROLES = ("builder", "reviewer", "spec_maintainer", "orchestration")
# The schema's top-level keys (a test holds them to the schema's properties).
TOP_LEVEL = ("responses", "match", "expect_snapshot", "misbehave")
SHA_RE = re.compile(r"sha256:[0-9a-f]{64}")


class FixtureError(Exception):
    """A fixture that cannot be used; the message names the file and JSON path."""


def schema_file(name: str) -> Path:
    """A v1 schema file, from the installed package or the source tree."""
    from pathlib import Path

    here = Path(__file__).resolve().parent
    for base in (here.parent / "lorch" / "_data" / "schemas", here.parent / "schemas"):
        p = base / "v1" / f"{name}.v1.json"
        if p.is_file():
            return p
    raise FixtureError(f"mockagent installation is missing schemas/v1/{name}.v1.json")


def _parts(path: str) -> list[str]:
    """The names in a POSIX path, as pathlib sees them ("", "." and repeated "/" dropped)."""
    return [p for p in path.split("/") if p and p != "."]


def shown(path: str) -> str:
    """``path`` as ``str(pathlib.PurePosixPath(path))`` writes it, without pathlib.

    Messages name a fixture the way they did when it was read through pathlib
    (``./fx.json`` is ``fx.json``); a property test compares the two.
    """
    root = ""
    if path.startswith("/"):
        # POSIX leaves the meaning of exactly two leading slashes to the system.
        root = "//" if path.startswith("//") and not path.startswith("///") else "/"
    return (root + "/".join(_parts(path))) or "."


def _path(parts: Any) -> str:
    out = "$"
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate a fixture; raise FixtureError with the JSON path of the mistake."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
        # Decoded whole, so a bad byte is named by its place in the file; newlines
        # as a text-mode read leaves them (the line numbers of a JSON error).
        data = json.loads(raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n"))
    except FileNotFoundError:
        raise FixtureError(f"{path}: no such fixture file") from None
    except OSError as e:
        raise FixtureError(f"{path}: cannot read the fixture: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise FixtureError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
    except json.JSONDecodeError as e:
        raise FixtureError(
            f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    validate(data, path)
    return data  # type: ignore[no-any-return]


def validate(data: Any, path: str | os.PathLike[str]) -> None:
    from mockagent.schemacheck import is_valid

    e = None
    if not is_valid("fixture", data):
        # Only a rejected fixture pays for jsonschema, which names the mistake.
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import best_match

        schema = json.loads(schema_file("fixture").read_text(encoding="utf-8"))
        e = best_match(Draft202012Validator(schema).iter_errors(data))
    if e is not None:
        # Inside a oneOf, the deepest alternative's error names the real mistake.
        while e.context:
            e = max(e.context, key=lambda c: len(c.absolute_path))
        hint = ""
        if e.validator == "additionalProperties" and isinstance(e.instance, dict):
            known = list((e.schema or {}).get("properties", {}))
            hint = next((_hint(k, known) for k in e.instance if k not in known), "")
        raise FixtureError(f"{path}: {_path(e.absolute_path)}: {_short(e.message)}{hint}")
    # Unknown top-level keys are notes ("comment": the original fixtures have
    # them), unless one is so close to a known key that it must be a typo.
    for key in data:
        hint = "" if key in TOP_LEVEL else _hint(key, list(TOP_LEVEL))
        if hint:
            raise FixtureError(f"{path}: $.{key}: unknown key{hint}")
    folder = os.path.dirname(path)
    for action, spec in (data.get("responses") or {}).items():
        for i, resp in enumerate(_responses(spec)):
            where = f"$.responses.{action}" + (f"[{i}]" if isinstance(spec, list) else "")
            for j, ev in enumerate(resp.get("events", [])):
                for k, art in enumerate(ev.get("artifacts", [])):
                    if art.get("write") is False and not SHA_RE.fullmatch(art.get("sha256", "")):
                        raise FixtureError(
                            f"{path}: {where}.events[{j}].artifacts[{k}].sha256: an artifact "
                            'with "write": false is sent as claimed and needs a sha256:<64 hex>'
                        )
            for j, f in enumerate(resp.get("files", [])):
                if "content_file" in f and not os.path.isfile(
                    os.path.join(folder, f["content_file"])
                ):
                    raise FixtureError(
                        f"{path}: {where}.files[{j}].content_file: "
                        f"no such file {f['content_file']!r} next to the fixture"
                    )
    for rule in data.get("match", []):
        for j, f in enumerate(rule.get("response", {}).get("files", [])):
            if "content_file" in f and not os.path.isfile(os.path.join(folder, f["content_file"])):
                raise FixtureError(f"{path}: $.match.files[{j}].content_file: missing file")


def _hint(key: str, known: list[str], cutoff: float = 0.75) -> str:
    """ "; did you mean 'x'?" for the known name closest to ``key``, if one is close.

    A note key ("comment") is never close: difflib's own first bound, the share
    of letters the two names have in common (its ``quick_ratio``, never below
    the real ratio), rules out every known name without importing difflib.
    """
    if not any(_letters_ratio(key, k) >= cutoff for k in known):
        return ""
    import difflib

    close = difflib.get_close_matches(key, known, n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""


def _letters_ratio(a: str, b: str) -> float:
    """``difflib.SequenceMatcher(None, b, a).quick_ratio()``, computed the same way."""
    avail: dict[str, int] = {}
    for c in b:
        avail[c] = avail.get(c, 0) + 1
    matches = 0
    for c in a:
        if avail.get(c, 0) > 0:
            avail[c] -= 1
            matches += 1
    length = len(a) + len(b)
    return 2.0 * matches / length if length else 1.0


def _short(message: str, limit: int = 160) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def _responses(spec: Any) -> list[dict[str, Any]]:
    if isinstance(spec, list):
        return spec
    if isinstance(spec, dict) and "sequence" in spec:
        return list(spec["sequence"])
    return [spec]


def _matches(rule: dict[str, Any], cmd: dict[str, Any]) -> bool:
    when = rule.get("when", {})
    inputs = cmd.get("inputs") or {}
    for key, want in when.items():
        if key == "action":
            got = cmd.get("action")
        elif key == "task_id":
            got = cmd.get("task_id")
        elif key == "round":
            got = inputs.get("round")
        else:
            got = inputs.get(key)
        if got != want:
            return False
    return True


def pick_response(fixture: dict[str, Any], cmd: dict[str, Any], call: int) -> dict[str, Any] | None:
    """The response for this command: first matching rule, else the action's sequence."""
    for rule in fixture.get("match", []):
        if _matches(rule, cmd):
            return dict(rule["response"])
    spec = (fixture.get("responses") or {}).get(cmd["action"])
    if spec is None:
        return None
    seq = _responses(spec)
    after = spec.get("after", "repeat_last") if isinstance(spec, dict) else "repeat_last"
    if not seq:
        return None
    if call <= len(seq):
        return dict(seq[call - 1])
    if after == "cycle":
        return dict(seq[(call - 1) % len(seq)])
    return dict(seq[-1])


def render(value: Any, ctx: dict[str, str]) -> Any:
    """Replace ``{name}`` placeholders in every string of ``value``."""
    if isinstance(value, str):
        for k, v in ctx.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, list):
        return [render(v, ctx) for v in value]
    if isinstance(value, dict):
        return {k: render(v, ctx) for k, v in value.items()}
    return value


def safe_target(workspace: str, rel: str) -> str:
    """``rel`` inside ``workspace`` (joined as pathlib joins them), or FixtureError."""
    parts = _parts(rel)
    if rel.startswith("/") or ".." in parts or not rel:
        raise FixtureError(f"file path {rel!r} must be relative and inside the workspace")
    return os.path.join(workspace, *parts)


def default_response(
    role: str, cmd: dict[str, Any], review_changes: int, spec_changes: int
) -> dict[str, Any]:
    """A correct, always-succeeding answer for the role."""
    task = cmd["task_id"]
    rnd = int((cmd.get("inputs") or {}).get("round", 1))
    action = cmd["action"]
    if role == "builder" or action in ("implement", "implement_changes"):
        return {
            "files": [
                {
                    "path": f"src/{task.lower()}.py",
                    "content": f'"""Work for {task}, round {rnd}."""\n\nROUND = {rnd}\n',
                }
            ],
            "events": [
                {
                    "type": "builder.completed",
                    "status": "success",
                    "payload": {"tests": {"status": "pass", "summary": "1 passed"}},
                }
            ],
        }
    if role == "reviewer" or action == "review":
        status = "changes_requested" if rnd <= review_changes else "approved"
        body = json.dumps({"task_id": task, "round": rnd, "status": status}, sort_keys=True)
        return {
            "files": [{"path": f"reviews/{task}.json", "content": body + "\n"}],
            "events": [
                {
                    "type": "review.completed",
                    "status": status,
                    "payload": {"review_path": f"reviews/{task}.json", "summary": f"round {rnd}"},
                }
            ],
        }
    if role == "spec_maintainer" or action == "update_spec":
        changes = rnd <= spec_changes
        body = json.dumps({"task_id": task, "round": rnd, "changes": changes}, sort_keys=True)
        event = "spec.changes_requested" if changes else "spec.updated"
        return {
            "files": [{"path": f"spec_notes/{task}.json", "content": body + "\n"}],
            "events": [{"type": event, "payload": {"notes_path": f"spec_notes/{task}.json"}}],
        }
    return _default_proposal(cmd)


def _default_proposal(cmd: dict[str, Any]) -> dict[str, Any]:
    """Orchestration without a fixture: the discovered files as plans, one task per plan.

    Never edits a file (MASTER-SPEC §10.2): it only reads what lorch sent.
    """
    inputs = cmd.get("inputs") or {}
    meta = inputs.get("discovery_metadata") or {}
    found = [c for c in meta.get("candidates") or [] if isinstance(c, dict)]
    paths = [str(c.get("path")) for c in found if isinstance(c.get("path"), str)][:3]
    if isinstance(inputs.get("plan"), str):
        paths = [inputs["plan"]]
    if not paths:
        return {
            "events": [
                {
                    "type": "error",
                    "payload": {
                        "code": "no_plan",
                        "message": "no plan or spec file was discovered in the workspace",
                        "retriable": False,
                    },
                }
            ]
        }
    candidates = [{"path": p, "confidence": round(1.0 - 0.1 * i, 2)} for i, p in enumerate(paths)]
    tasks = [
        {"id": f"T-{i + 1:04d}", "title": f"Implement {p}", "files": []}
        for i, p in enumerate(paths[:1])
    ]
    return {
        "events": [
            {
                "type": "orchestration.proposed_tasks",
                "payload": {"plan_candidates": candidates, "derived_tasks": tasks},
            }
        ]
    }
