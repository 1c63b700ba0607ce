"""``lorch conformance --transport acp -- CMD``: the idempotency battery for an ACP agent.

ACP has no idempotency key: an ACP agent prompted twice does the work twice,
and one killed mid-turn leaves half of it behind. So each check runs twice:

- **bare** — what happens if the agent is simply prompted again. Expected to
  fail for any ACP agent; reported as an expected failure, never blocking.
- **lorch** — the same, with lorch's checkpoints: the workspace is checkpointed
  before the turn and restored before the prompt is sent again, as lorch does
  on resume. Must pass.

Each check compares the workspace with the one a single clean turn leaves
(the baseline), so the agent must do the same work when given the same prompt
(a scripted agent, or a real one against a scripted model).

One more check is about lorch's file service, not idempotency:
**ACP-FS-001** offers the agent ``fs/read_text_file`` and ``fs/write_text_file``
(a role's ``"fs": true``), asks it to create a new file, and looks for the file
on disk. An agent that reads through lorch before writing and takes a missing
file's ``-32002`` for a failure (Gemini CLI 0.61) cannot create files with the
capability on: the check fails and says to leave ``fs`` off for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from lorch.agents.acp.host import AcpSettings
from lorch.agents.acp.port import AcpPort
from lorch.agents.transport import Inbox, Incoming, Launch, SendContext
from lorch.conformance.kit import Report
from lorch.conformance.session import CheckOutcome, ConformanceCheck, Verdict
from lorch.store.checkpoint import EXCLUDED, Checkpoints
from lorch.wire import protocol, vocabulary
from lorch.wire.errors import AgentError, AgentStartError, UsageError
from lorch.wire.redact import Redactor, secret_values

Files = dict[str, bytes]


def _noop(_: Any) -> Verdict:
    return Verdict("skip", "")


CHECKS = {
    "ACP-IDEMP-001": "a completed turn prompted again must not change the workspace again",
    "ACP-IDEMP-004": "a turn killed mid-work, then prompted again, must leave its work once",
}
FS_CHECK = "ACP-FS-001"
FS_FILE = "lorch-fs-check/new-file.txt"
FS_CONTENT = "created through lorch's file service"
# The prompt of the fs check (a template of lorch.agents.acp.prompts: $workspace is filled in);
# a scripted agent or model recognises it by its first word.
FS_PROMPT = (
    f"{FS_CHECK} (lorch conformance): create the new file $workspace/{FS_FILE} whose whole "
    f"content is the line: {FS_CONTENT}\nUse your tool for writing files, not a shell "
    "command. Change nothing else, then end your turn."
)
FS_TEXT = "a new file asked for with lorch's file service offered (fs) must be on disk"
BARE_NOTE = (
    "expected for an ACP agent: ACP has no idempotency key, so a prompt sent again is "
    "worked again; lorch never relies on that (see the lorch row)"
)


def _check(cid: str, mode: str) -> ConformanceCheck:
    severity = "required" if mode == "lorch" else "recommended"
    return ConformanceCheck(f"{cid}-{mode}", severity, "DESIGN §5.12", CHECKS[cid], _noop)


def _files(root: Path) -> Files:
    out: Files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        if rel_dir == ".":
            dirnames[:] = [d for d in dirnames if d not in EXCLUDED and not d.startswith(".")]
        else:
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            with contextlib.suppress(OSError):
                out[rel] = full.read_bytes()
    return out


def _diff(expected: Files, got: Files) -> str:
    added = sorted(set(got) - set(expected))
    missing = sorted(set(expected) - set(got))
    changed = sorted(p for p in set(got) & set(expected) if got[p] != expected[p])
    parts = []
    if changed:
        parts.append(f"changed {', '.join(changed[:5])}")
    if added:
        parts.append(f"extra {', '.join(added[:5])}")
    if missing:
        parts.append(f"missing {', '.join(missing[:5])}")
    return "; ".join(parts)


class _Driver:
    def __init__(self, argv: list[str], role: str, seed: Path | None, timeout: float) -> None:
        self.argv = argv
        self.role = role
        self.seed = seed
        self.timeout = timeout
        self.root = Path(tempfile.mkdtemp(prefix="lorch-acp-conformance-"))
        self.redactor = Redactor(secret_values(dict(os.environ)))
        self.generation = 0
        self.transcript: list[str] = []

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def workspace(self, name: str) -> Path:
        ws = self.root / name
        if self.seed is not None:
            shutil.copytree(self.seed, ws, symlinks=True)
        else:
            ws.mkdir()
        return ws

    def log_path(self, ws: Path, generation: int) -> Path:
        return self.root / "logs" / f"{ws.name}-{generation}.ndjson"

    @contextlib.contextmanager
    def port(self, ws: Path, inbox: Inbox, *, fs: bool = False) -> Iterator[AcpPort]:
        self.generation += 1
        launch = Launch(
            role=self.role,
            argv=self.argv,
            cwd=ws,
            env=dict(os.environ),
            log_path=self.log_path(ws, self.generation),
            generation=self.generation,
            redactor=self.redactor,
        )
        settings = AcpSettings(
            workspace=ws,
            task={"id": "T-CONF", "goal": "conformance"},
            prompts={self.action(): FS_PROMPT} if fs else {},
            fs=fs,
        )
        port = AcpPort(launch, inbox, settings)
        port.start()
        try:
            yield port
        finally:
            port.kill()

    def action(self) -> str:
        return {"builder": "implement", "reviewer": "review"}.get(self.role, "update_spec")

    def command(self) -> dict[str, Any]:
        action = self.action()
        return {
            "kind": "command",
            "message_id": protocol.new_message_id("cmd"),
            "correlation_id": "corr-T-CONF-1",
            "task_id": "T-CONF",
            "idempotency_key": "ik:" + "c" * 64,
            "to": {"agent_type": self.role},
            "action": action,
            "inputs": {"round": 1},
            "expected_outputs": [],
            "version": {"snapshot_id": "snap-000000000000"},
            "deadline": "2099-01-01T00:00:00Z",
            "retry": {"attempt": 0, "max_attempts": 3},
            "priority": 5,
        }

    def turn(
        self, port: AcpPort, inbox: Inbox, stop_when: Callable[[Incoming], bool] | None = None
    ) -> str:
        """Prompt once; 'done' at the terminal event, 'stopped' when ``stop_when`` fires."""
        cmd = self.command()
        if not port.send(cmd, protocol.encode(cmd), SendContext()):
            raise AgentError(f"agent {self.argv[0]} is gone before its turn")
        end = time.monotonic() + self.timeout
        while time.monotonic() < end:
            item = inbox.get(0.1)
            if item is None or item.generation != port.generation:
                continue  # nothing, or the last words of an agent already ended
            if item.message is not None:
                self.transcript.append(
                    f"{port.agent_id}: {item.message.get('event')} "
                    f"{(item.message.get('payload') or {}).get('message', '')}".rstrip()
                )
            if stop_when is not None and stop_when(item):
                return "stopped"
            if item.kind == "exit":
                return "exited"
            if item.message is not None and item.message["event"] in vocabulary.TERMINAL_EVENTS:
                return "done"
        raise AgentError(f"agent {self.argv[0]}: no end of turn in {self.timeout:g} s")


def _first_tool_done(item: Incoming) -> bool:
    p = (item.message or {}).get("payload") or {}
    return p.get("acp") == "tool_call" and p.get("status") == "completed"


def run_acp_battery(
    argv: list[str],
    *,
    role: str = "builder",
    workspace: Path | None = None,
    timeout: float = 60.0,
    only: list[str] | None = None,
) -> Report:
    known = {f"{c}-{m}" for c in CHECKS for m in ("bare", "lorch")} | {FS_CHECK}
    for c in only or []:
        if c not in known and c not in CHECKS:
            raise UsageError(f"--only {c}: unknown check; known: {', '.join(sorted(known))}")
    started = time.monotonic()
    d = _Driver(argv, role, workspace, timeout)
    inbox = Inbox()
    outcomes: list[CheckOutcome] = []
    try:
        base_ws = d.workspace("baseline")
        try:
            with d.port(base_ws, inbox) as port:
                if d.turn(port, inbox) != "done":
                    raise AgentError(f"agent {argv[0]}: its first turn did not complete")
        except AgentError as e:
            raise AgentStartError(str(e)) from None
        baseline = _files(base_ws)

        def want(cid: str) -> bool:
            return not only or cid in only or cid.rsplit("-", 1)[0] in only

        for mode in ("bare", "lorch"):
            if want(f"ACP-IDEMP-001-{mode}"):
                outcomes.append(_resent_turn(d, inbox, mode, baseline))
            if want(f"ACP-IDEMP-004-{mode}"):
                outcomes.append(_cut_turn(d, inbox, mode, baseline))
        if want(FS_CHECK):
            outcomes.append(_new_file(d, inbox))
    finally:
        inbox.close()
        d.close()
    return Report(outcomes, "\n".join(d.transcript) + "\n", time.monotonic() - started, [])


def _resent_turn(d: _Driver, inbox: Inbox, mode: str, baseline: Files) -> CheckOutcome:
    """ACP-IDEMP-001: a completed turn prompted again (after a rollback under lorch)."""
    cid = f"ACP-IDEMP-001-{mode}"
    ws = d.workspace(cid)
    ck = Checkpoints(ws, d.root / f"{cid}.git", durable=False)
    pre = ck.take()
    with d.port(ws, inbox) as port:
        d.turn(port, inbox)
        if mode == "lorch":
            ck.restore(pre)  # what lorch does before a prompt goes out again
        d.turn(port, inbox)
    return _outcome(cid, mode, baseline, _files(ws))


def _cut_turn(d: _Driver, inbox: Inbox, mode: str, baseline: Files) -> CheckOutcome:
    """ACP-IDEMP-004: a turn cut short after its first tool call, then prompted again."""
    cid = f"ACP-IDEMP-004-{mode}"
    ws = d.workspace(cid)
    ck = Checkpoints(ws, d.root / f"{cid}.git", durable=False)
    pre = ck.take()
    with d.port(ws, inbox) as port:
        how = d.turn(port, inbox, stop_when=_first_tool_done)
    if how != "stopped":
        why = f"the turn {how} before any tool call completed: nothing to cut"
        return CheckOutcome(_check(cid.rsplit("-", 1)[0], mode), Verdict("skip", why))
    if mode == "lorch":
        ck.restore(pre)
    with d.port(ws, inbox) as port:
        d.turn(port, inbox)
    return _outcome(cid, mode, baseline, _files(ws))


def _outcome(cid: str, mode: str, baseline: Files, got: Files) -> CheckOutcome:
    diff = _diff(baseline, got)
    check = _check(cid.rsplit("-", 1)[0], mode)
    if not diff:
        evidence = "the workspace equals a single clean turn's"
        return CheckOutcome(
            check,
            Verdict(
                "pass", evidence + ("" if mode == "lorch" else " (this agent is idempotent itself)")
            ),
        )
    if mode == "bare":
        return CheckOutcome(check, Verdict("fail", f"{diff}: {BARE_NOTE}"), expected_failure=True)
    return CheckOutcome(
        check,
        Verdict(
            "fail",
            f"with lorch's checkpoints the workspace still differs from a clean turn's: {diff}",
        ),
    )


def _fs_calls(log: Path) -> dict[str, int]:
    """How often the agent called each ``fs/*`` method, from its log."""
    counts: dict[str, int] = {}
    with contextlib.suppress(OSError):
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue
            message = entry.get("message") if isinstance(entry, dict) else None
            method = message.get("method") if isinstance(message, dict) else None
            if entry.get("dir") == "in" and isinstance(method, str) and method.startswith("fs/"):
                counts[method] = counts.get(method, 0) + 1
    return counts


def _new_file(d: _Driver, inbox: Inbox) -> CheckOutcome:
    """ACP-FS-001: asked for a new file with lorch's fs offered, the file is on disk."""
    check = ConformanceCheck(FS_CHECK, "required", "docs/real-agents.md", FS_TEXT, _noop)
    ws = d.workspace(FS_CHECK)
    seen = len(d.transcript)
    with d.port(ws, inbox, fs=True) as port:
        how = d.turn(port, inbox)
        log = d.log_path(ws, port.generation)
    calls = _fs_calls(log)
    used = ", ".join(f"{m} ×{n}" for m, n in sorted(calls.items())) or "no fs/* request"
    target = ws / FS_FILE
    if target.is_file():
        got = target.read_text(encoding="utf-8", errors="replace").strip()
        if got == FS_CONTENT:
            return CheckOutcome(check, Verdict("pass", f"{FS_FILE} created ({used})"))
        return CheckOutcome(
            check, Verdict("fail", f"{FS_FILE} created with other content: {got[:80]!r} ({used})")
        )
    said = [line for line in d.transcript[seen:] if "[failed]" in line or "error" in line]
    why = f"; it said: {said[-1][:300]}" if said else ""
    return CheckOutcome(
        check,
        Verdict(
            "fail",
            f"the turn {'ended' if how == 'done' else how} without {FS_FILE} on disk "
            f"({used}){why}: this agent cannot "
            'create files through lorch\'s file service; leave "fs" off for its role',
        ),
    )
