"""The files a mock agent writes: durably, inside the workspace, with their true checksums."""

from __future__ import annotations

import os

from mockagent.wire import atomic_write, sha256_hex

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from mockagent.agent import Agent


def write_file(agent: Agent, spec: dict[str, Any], data: bytes | None = None) -> dict[str, Any]:
    from mockagent.fixture import safe_target

    target = safe_target(agent.o.workspace, spec["path"])
    if data is None and "content_file" in spec:
        with open(os.path.join(agent.o.fixture_dir, spec["content_file"]), "rb") as f:
            data = f.read()
    elif data is None:
        data = str(spec.get("content", "")).encode()
    atomic_write(target, data)
    # misbehave.lie_sha256: claim the hash of other bytes than those written.
    claimed = data + b"\0lie" if agent._misbehave("lie_sha256") else data
    return {"path": spec["path"], "sha256": "sha256:" + sha256_hex(claimed), "size": len(data)}


def fixture_artifact(
    agent: Agent, spec: dict[str, Any], written: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """An artifact an event of the fixture lists: made real unless ``write`` is false.

    The original fixtures name files they never wrote, with placeholder
    checksums; such a file is written here (``size`` deterministic bytes) and
    reported with its true sha256, so the claim holds. A file this response
    wrote is reported as written; ``"write": false`` sends the claim as is.
    """
    from mockagent.fixture import FixtureError

    claim: dict[str, Any] = {k: spec[k] for k in ("path", "sha256", "size") if k in spec}
    if spec.get("write") is False or agent.o.no_files:
        return claim
    path = str(spec["path"])
    if path in written:
        return written[path]
    size = int(spec["size"])
    pattern = f"mockagent placeholder for {path}\n".encode()
    data = (pattern * (size // len(pattern) + 1))[:size]
    try:
        art = write_file(agent, {"path": path}, data)
    except FixtureError as e:
        agent.log(f"fixture artifact not written, sent as claimed: {e}")
        return claim
    agent.log(
        f"fixture artifact {path} has no content: wrote {size} placeholder bytes, "
        f"reported with its true {art['sha256']} (the fixture said {spec.get('sha256')})"
    )
    written[path] = art
    return art
