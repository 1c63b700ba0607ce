#!/usr/bin/env python3
"""A scripted ACP agent, built on the agent side of the ACP Python SDK.

It imports nothing from lorch: lorch's ACP client must work with it as with any
other agent. ``acp_agent.py SCRIPT.json`` (or ``$ACP_AGENT_SCRIPT``); the script:

    {"agent": {"name": "scripted", "version": "1.0"},     # initialize's agentInfo
     "load_session": false,
     "initialize": "never",                               # never answer initialize
     "auth": {"required": true, "unless_env": "SCRIPTED_KEY", "message": "no key",
              "methods": [{"id": "key", "name": "API key", "description": "set SCRIPTED_KEY"}]},
     "turns": [{"match": "Review round", "calls": [[STEP, ...], [STEP, ...]]}, ...]}

A prompt runs the first turn whose ``match`` (a substring; none matches every
prompt) is in the prompt text; its n-th call runs ``calls[n]`` (the last one
repeats). Calls are counted per turn in ``$ACP_AGENT_STATE`` (a directory
outside the workspace) when set, so a restarted agent goes on counting. Steps:

    {"text": "...", "chunks": 3}       agent_message_chunk(s)
    {"thought": "..."}                 agent_thought_chunk
    {"plan": ["step one", ...]}        plan
    {"write": PATH, "content": S}      write a file itself (tool_call edit around it)
    {"write": PATH, "json": {...}}     same, JSON content
    {"write": PATH, ..., "via": "fs"}  through fs/write_text_file instead
    {"write": PATH, ..., "quiet": true} without the tool_call updates around it
    {"write": PATH, ..., "via": "fs", "read_first": true}
                                       read it through fs/read_text_file first and fail
                                       the write on any error, a missing file's too (as
                                       Gemini CLI 0.61 does)
    {"append": PATH, "content": S}     append to a file itself (not idempotent)
    {"read": PATH}                     fs/read_text_file, the text echoed as a message
    {"delete": PATH}                   remove a file itself
    {"permission": {"kind": "edit", "title": T, "paths": [...]}, "then": [STEP, ...],
     "else": [STEP, ...]}              session/request_permission; then/else by the answer
    {"terminal": ["cmd", "arg", ...]}  terminal/create, wait_for_exit, output, release
    {"raw_update": {...}}              a session/update with this update, unvalidated
    {"stderr": "..."}                  a line on stderr
    {"sleep_ms": N}
    {"hang": true}                     wait for session/cancel (then stopReason cancelled)
    {"hang": "forever"}                ignore session/cancel too
    {"exit": CODE}                     exit the process at once
    {"exit": CODE, "once": NAME}       only the first time ($ACP_AGENT_STATE/NAME marks it)
    {"stop": "end_turn"}               the stopReason (default end_turn)

Paths are relative to the session's cwd; ``{task_id}`` in a path or content is
the task id lorch named in the prompt ("for task T-0042"). Every prompt is
journaled to ``$ACP_AGENT_STATE/journal.ndjson`` (session, turn, call, prompt
digest) so tests can count what the agent was asked to do.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import acp
from acp import schema as s

TASK_RE = re.compile(r"for task ([A-Za-z0-9][A-Za-z0-9._-]*)")


def _state_dir() -> Path | None:
    d = os.environ.get("ACP_AGENT_STATE")
    if not d:
        return None
    p = Path(d)
    p.mkdir(parents=True, exist_ok=True)
    return p


class Scripted:
    def __init__(self, script: dict[str, Any]) -> None:
        self.script = script
        self.conn: Any = None
        self.sessions: dict[str, Path] = {}
        self.cancelled: dict[str, asyncio.Event] = {}
        self.calls: dict[int, int] = {}
        self.state = _state_dir()
        self.tool_seq = 0

    def on_connect(self, conn: Any) -> None:
        self.conn = conn

    # -- agent methods ----------------------------------------------------------

    async def initialize(self, protocol_version: int, **kwargs: Any) -> s.InitializeResponse:
        if self.script.get("initialize") == "never":
            await asyncio.Event().wait()
        info = self.script.get("agent", {"name": "scripted-acp-agent", "version": "1.0"})
        methods = []
        for m in self.script.get("auth", {}).get("methods", []):
            methods.append(
                s.AuthMethodAgent(id=m["id"], name=m["name"], description=m.get("description"))
            )
        return s.InitializeResponse(
            protocol_version=acp.PROTOCOL_VERSION,
            agent_capabilities=s.AgentCapabilities(
                load_session=bool(self.script.get("load_session"))
            ),
            auth_methods=methods,
            agent_info=s.Implementation(name=info["name"], version=info["version"]),
        )

    def _check_auth(self) -> None:
        auth = self.script.get("auth") or {}
        if not auth.get("required"):
            return
        var = auth.get("unless_env")
        if var and os.environ.get(var):
            return
        if "message" in auth:  # the agent's own words, as a real agent puts them
            raise acp.RequestError(-32000, auth["message"])
        raise acp.RequestError.auth_required({"details": "no credentials"})

    async def authenticate(self, method_id: str, **kwargs: Any) -> s.AuthenticateResponse:
        raise acp.RequestError.auth_required({"details": f"method {method_id} cannot log in here"})

    async def new_session(self, cwd: str, **kwargs: Any) -> s.NewSessionResponse:
        self._check_auth()
        sid = f"sess-{os.getpid()}-{len(self.sessions) + 1}"
        self.sessions[sid] = Path(cwd)
        self.cancelled[sid] = asyncio.Event()
        return s.NewSessionResponse(session_id=sid)

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        ev = self.cancelled.get(session_id)
        if ev is not None:
            ev.set()

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> s.PromptResponse:
        text = "".join(getattr(b, "text", "") for b in prompt)
        m = TASK_RE.search(text)
        task_id = m.group(1).rstrip(".") if m else "TASK"
        index, turn = self._turn(text)
        n = self.calls.get(index, 0)
        if self.state is not None:
            counter = self.state / f"turn-{index}.count"
            n = int(counter.read_text()) if counter.exists() else 0
            counter.write_text(str(n + 1))
        self.calls[index] = n + 1
        calls = turn.get("calls") or [[]]
        steps = calls[min(n, len(calls) - 1)]
        self._journal(
            {
                "session": session_id,
                "turn": index,
                "call": n + 1,
                "prompt_sha256": hashlib.sha256(text.encode()).hexdigest(),
                "task_id": task_id,
            }
        )
        ctx = {"sid": session_id, "cwd": self.sessions[session_id], "task_id": task_id}
        stop = await self._run(steps, ctx)
        return s.PromptResponse(stop_reason=stop)

    # -- the script -------------------------------------------------------------

    def _turn(self, text: str) -> tuple[int, dict[str, Any]]:
        for i, turn in enumerate(self.script.get("turns", [])):
            if turn.get("match", "") in text:
                return i, turn
        return -1, {"calls": [[{"text": "nothing scripted for this prompt"}]]}

    def _journal(self, entry: dict[str, Any]) -> None:
        if self.state is None:
            return
        with open(self.state / "journal.ndjson", "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")

    async def _update(self, sid: str, update: Any) -> None:
        await self.conn.session_update(session_id=sid, update=update)

    def _sub(self, value: str, ctx: dict[str, Any]) -> str:
        return value.replace("{task_id}", ctx["task_id"])

    async def _tool(self, sid: str, kind: str, title: str, path: str | None) -> str:
        self.tool_seq += 1
        tid = f"tool-{self.tool_seq}"
        locations = [s.ToolCallLocation(path=path)] if path else None
        await self._update(
            sid,
            acp.start_tool_call(tid, title, kind=kind, status="in_progress", locations=locations),
        )
        return tid

    async def _run(self, steps: list[dict[str, Any]], ctx: dict[str, Any]) -> str:
        sid, cwd = ctx["sid"], ctx["cwd"]
        stop = "end_turn"
        for step in steps:
            if "text" in step:
                text = self._sub(step["text"], ctx)
                k = max(1, int(step.get("chunks", 1)))
                size = max(1, -(-len(text) // k))
                for i in range(0, len(text), size):
                    await self._update(sid, acp.update_agent_message_text(text[i : i + size]))
            elif "thought" in step:
                await self._update(sid, acp.update_agent_thought_text(step["thought"]))
            elif "plan" in step:
                await self._update(
                    sid,
                    acp.update_plan([acp.plan_entry(e, status="pending") for e in step["plan"]]),
                )
            elif "write" in step:
                rel = self._sub(step["write"], ctx)
                content = (
                    json.dumps(step["json"]) + "\n"
                    if "json" in step
                    else self._sub(step.get("content", ""), ctx)
                )
                target = cwd / rel
                quiet = step.get("quiet", False)
                tid = "" if quiet else await self._tool(sid, "edit", f"Write {rel}", str(target))
                if step.get("via") == "fs":
                    try:
                        if step.get("read_first"):
                            await self.conn.read_text_file(session_id=sid, path=str(target))
                        await self.conn.write_text_file(
                            session_id=sid, path=str(target), content=content
                        )
                        status = "completed"
                    except acp.RequestError as e:
                        status = "failed"
                        await self._update(
                            sid, acp.update_agent_message_text(f"write refused: {e}")
                        )
                else:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(content, encoding="utf-8")
                    status = "completed"
                if not quiet:
                    await self._update(sid, acp.update_tool_call(tid, status=status))
            elif "append" in step:
                target = cwd / self._sub(step["append"], ctx)
                target.parent.mkdir(parents=True, exist_ok=True)
                with open(target, "a", encoding="utf-8") as f:
                    f.write(self._sub(step.get("content", ""), ctx))
            elif "read" in step:
                try:
                    got = await self.conn.read_text_file(
                        session_id=sid, path=str(cwd / step["read"])
                    )
                    await self._update(sid, acp.update_agent_message_text(f"read: {got.content}"))
                except acp.RequestError as e:
                    await self._update(sid, acp.update_agent_message_text(f"read refused: {e}"))
            elif "delete" in step:
                (cwd / self._sub(step["delete"], ctx)).unlink(missing_ok=True)
            elif "permission" in step:
                p = step["permission"]
                paths = [str(cwd / x) if not os.path.isabs(x) else x for x in p.get("paths", [])]
                self.tool_seq += 1
                call = s.ToolCallUpdate(
                    tool_call_id=f"tool-{self.tool_seq}",
                    title=p.get("title", p.get("kind", "tool")),
                    kind=p.get("kind"),
                    status="pending",
                    locations=[s.ToolCallLocation(path=x) for x in paths] or None,
                )
                options = [
                    s.PermissionOption(option_id="allow", name="Allow", kind="allow_once"),
                    s.PermissionOption(
                        option_id="always", name="Always allow", kind="allow_always"
                    ),
                    s.PermissionOption(option_id="reject", name="Reject", kind="reject_once"),
                ]
                answer = await self.conn.request_permission(
                    session_id=sid, tool_call=call, options=options
                )
                outcome = answer.outcome
                allowed = getattr(outcome, "option_id", None) in ("allow", "always")
                branch = step.get("then", []) if allowed else step.get("else", [])
                stop = await self._run(branch, ctx)
            elif "terminal" in step:
                argv = step["terminal"]
                tid = await self._tool(sid, "execute", " ".join(argv), None)
                term = await self.conn.create_terminal(
                    session_id=sid, command=argv[0], args=argv[1:], cwd=str(cwd)
                )
                done = await self.conn.wait_for_terminal_exit(
                    session_id=sid, terminal_id=term.terminal_id
                )
                out = await self.conn.terminal_output(session_id=sid, terminal_id=term.terminal_id)
                await self.conn.release_terminal(session_id=sid, terminal_id=term.terminal_id)
                await self._update(
                    sid, acp.update_agent_message_text(f"exit {done.exit_code}: {out.output}")
                )
                await self._update(sid, acp.update_tool_call(tid, status="completed"))
            elif "raw_update" in step:
                await self.conn._conn.send_notification(
                    "session/update", {"sessionId": sid, "update": step["raw_update"]}
                )
            elif "stderr" in step:
                sys.stderr.write(step["stderr"] + "\n")
                sys.stderr.flush()
            elif "sleep_ms" in step:
                await asyncio.sleep(step["sleep_ms"] / 1000)
            elif "hang" in step:
                if step["hang"] == "forever":
                    await asyncio.Event().wait()
                await self.cancelled[sid].wait()
                return "cancelled"
            elif "exit" in step:
                once = step.get("once")
                if once and self.state is not None:
                    marker = self.state / f"{once}.done"
                    if marker.exists():
                        continue
                    marker.write_text("1")
                sys.stdout.flush()
                os._exit(int(step["exit"]))
            elif "stop" in step:
                stop = step["stop"]
            if self.cancelled[sid].is_set():
                return "cancelled"
        return stop


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ACP_AGENT_SCRIPT", "")
    script = json.loads(Path(path).read_text(encoding="utf-8")) if path else {}
    asyncio.run(acp.run_agent(Scripted(script)))


if __name__ == "__main__":
    main()
