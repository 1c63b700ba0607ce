#!/usr/bin/env python3
"""An ACP agent that turns lorch's file service and permission answers against the user.

Built on the agent side of the ACP Python SDK; imports nothing from lorch.
``acp_fs_attacker.py SCRIPT.json``; the script is a list of turns, the n-th
prompt runs ``turns[n]`` (the last one repeats), a list of steps:

    {"read": PATH, "line": N, "limit": N}    fs/read_text_file
    {"write": PATH, "content": S}            fs/write_text_file
    ... "session": "bogus" | "previous"      on an unknown session, or the last turn's
    {"permission": {"kind": K, "locations": [PATH...], "raw_input": {...}}}
    {"terminal": ["cmd", ...], "cwd": PATH}  terminal/create (and wait, release)
    {"symlink": PATH, "to": TARGET}          plant a symlink itself (relative: in cwd)
    {"fifo": PATH}                           make a FIFO itself
    {"socket": PATH}                         bind a unix socket there itself
    {"sparse": PATH, "head": S, "size": N}   a file of N bytes, S then a hole
    {"flip": PATH, "targets": [A, B], "writes": N, "under": NAME}
                                             flip symlink PATH between A and B in a
                                             thread while writing PATH/NAME-<i> N times
    {"after": [STEP, ...]}                   run these once the prompt has been answered

Relative paths are resolved against the session's cwd; ``{ppid}`` in a path is
lorch's pid. Every fs, permission and terminal step appends one JSON line to
``$ATTACK_OUT``: ``{"step": KIND, "path": P, "ok": bool, "error": TEXT,
"content": TEXT (reads), "outcome": ID (permissions)}``; a step run ``after``
the prompt also has ``"after": true``, and the agent appends ``{"done": true}``
once all of them ran.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import acp
from acp import schema as s


class Attacker:
    def __init__(self, turns: list[list[dict[str, Any]]]) -> None:
        self.turns = turns
        self.conn: Any = None
        self.cwd: dict[str, Path] = {}
        self.prompts = 0
        self.previous: str | None = None
        self.previous_of: dict[str, str | None] = {}
        self.out = Path(os.environ["ATTACK_OUT"])
        self.keep: list[Any] = []  # sockets and tasks kept alive

    def on_connect(self, conn: Any) -> None:
        self.conn = conn

    async def initialize(self, protocol_version: int, **kwargs: Any) -> s.InitializeResponse:
        return s.InitializeResponse(
            protocol_version=acp.PROTOCOL_VERSION,
            agent_capabilities=s.AgentCapabilities(load_session=False),
            auth_methods=[],
            agent_info=s.Implementation(name="fs-attacker", version="1.0"),
        )

    async def new_session(self, cwd: str, **kwargs: Any) -> s.NewSessionResponse:
        sid = f"attack-{os.getpid()}-{len(self.cwd) + 1}"
        self.cwd[sid] = Path(cwd)
        return s.NewSessionResponse(session_id=sid)

    async def cancel(self, session_id: str, **kwargs: Any) -> None:
        return None

    async def prompt(self, session_id: str, prompt: list[Any], **kwargs: Any) -> s.PromptResponse:
        steps = self.turns[min(self.prompts, len(self.turns) - 1)]
        self.prompts += 1
        self.previous_of[session_id] = self.previous
        self.previous = session_id
        after: list[dict[str, Any]] = []
        for step in steps:
            if "after" in step:
                after.extend(step["after"])
            else:
                await self.run(step, session_id, after=False)
        if after:
            task = asyncio.get_running_loop().create_task(self.later(after, session_id))
            self.keep.append(task)
        return s.PromptResponse(stop_reason="end_turn")

    async def later(self, steps: list[dict[str, Any]], sid: str) -> None:
        await asyncio.sleep(0)  # after the prompt's answer is on its way
        for step in steps:
            await self.run(step, sid, after=True)
        self.record({"done": True})

    def path(self, sid: str, value: str) -> str:
        value = value.replace("{ppid}", str(os.getppid()))
        return value if os.path.isabs(value) else str(self.cwd[sid] / value)

    def record(self, entry: dict[str, Any]) -> None:
        with open(self.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry) + "\n")

    async def run(self, step: dict[str, Any], sid: str, *, after: bool) -> None:
        target = sid
        if step.get("session") == "bogus":
            target = "no-such-session"
        elif step.get("session") == "previous":
            target = self.previous_of.get(sid) or "none"
        entry: dict[str, Any] = {"after": after} if after else {}
        try:
            if "read" in step:
                entry.update(step="read", path=step["read"])
                got = await self.conn.read_text_file(
                    session_id=target,
                    path=self.path(sid, step["read"]),
                    line=step.get("line"),
                    limit=step.get("limit"),
                )
                entry["content"] = got.content[:200]
            elif "write" in step:
                entry.update(step="write", path=step["write"])
                await self.conn.write_text_file(
                    session_id=target, path=self.path(sid, step["write"]), content=step["content"]
                )
            elif "permission" in step:
                p = step["permission"]
                entry.update(step="permission", path=json.dumps(p.get("raw_input")))
                call = s.ToolCallUpdate(
                    tool_call_id="tool-1",
                    title=p.get("title", p["kind"]),
                    kind=p["kind"],
                    status="pending",
                    locations=[s.ToolCallLocation(path=x) for x in p.get("locations", [])] or None,
                    raw_input=p.get("raw_input"),
                )
                options = [
                    s.PermissionOption(option_id="allow", name="Allow", kind="allow_once"),
                    s.PermissionOption(option_id="reject", name="Reject", kind="reject_once"),
                ]
                answer = await self.conn.request_permission(
                    session_id=target, tool_call=call, options=options
                )
                entry["outcome"] = getattr(answer.outcome, "option_id", None) or "cancelled"
            elif "terminal" in step:
                argv = step["terminal"]
                entry.update(step="terminal", path=step.get("cwd"))
                cwd = self.path(sid, step["cwd"]) if step.get("cwd") else str(self.cwd[sid])
                term = await self.conn.create_terminal(
                    session_id=target, command=argv[0], args=argv[1:], cwd=cwd
                )
                await self.conn.wait_for_terminal_exit(
                    session_id=target, terminal_id=term.terminal_id
                )
                await self.conn.release_terminal(session_id=target, terminal_id=term.terminal_id)
            elif "symlink" in step:
                link = Path(self.path(sid, step["symlink"]))
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(self.path(sid, step["to"]))
                return
            elif "fifo" in step:
                os.mkfifo(self.path(sid, step["fifo"]))
                return
            elif "socket" in step:
                sock = socket.socket(socket.AF_UNIX)
                sock.bind(self.path(sid, step["socket"]))
                self.keep.append(sock)
                return
            elif "sparse" in step:
                with open(self.path(sid, step["sparse"]), "wb") as f:
                    f.write(step.get("head", "").encode())
                    f.truncate(int(step["size"]))
                return
            elif "flip" in step:
                await self.flip(step, sid)
                return
            entry["ok"] = True
        except acp.RequestError as e:
            entry.update(ok=False, error=f"{e} {json.dumps(e.data)}")
        self.record(entry)

    async def flip(self, step: dict[str, Any], sid: str) -> None:
        link = Path(self.path(sid, step["flip"]))
        targets = [self.path(sid, t) for t in step["targets"]]
        stop = threading.Event()

        def flipper() -> None:
            tmp = link.with_name(link.name + ".new")
            while not stop.is_set():
                for t in targets:
                    tmp.symlink_to(t)
                    os.replace(tmp, link)

        thread = threading.Thread(target=flipper)
        thread.start()
        ok = refused = 0
        try:
            for i in range(int(step["writes"])):
                try:
                    await self.conn.write_text_file(
                        session_id=sid,
                        path=str(link / f"{step['under']}-{i}"),
                        content="planted",
                    )
                    ok += 1
                except acp.RequestError:
                    refused += 1
        finally:
            stop.set()
            thread.join()
        self.record({"step": "flip", "ok": ok, "refused": refused})


def main() -> None:
    script = json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))
    asyncio.run(acp.run_agent(Attacker(script)))


if __name__ == "__main__":
    main()
