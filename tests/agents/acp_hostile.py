#!/usr/bin/env python3
"""A hostile ACP agent: the scripted agent (acp_agent.py) with steps that attack lorch.

Same script format and steps as ``acp_agent.py``, plus:

    {"raw": TEXT}                      TEXT and a newline on stdout, as is (not a message
                                       the SDK would send: a batch, a scalar, a forged answer)
    {"endless_line_mb": N}             N MiB on stdout with no newline, then hang
    {"tool_calls": N}                  N tool calls (each a tool_call update), as fast as it can
    {"many_files": N}                  write N small files (f/0.txt ...) itself, quietly
    {"failed_tool": TITLE, "content": TEXT, "raw_output": VALUE}
                                       a tool call that fails with that content / rawOutput
    {"raise": {"code": C, "message": M, "data": D}}
                                       answer the prompt with this JSON-RPC error

and, at the top of the script, ``"initialize_error": {"code": C, "message": M}``:
answer ``initialize`` with that error; ``"initialize_raw": TEXT``: write TEXT (a line)
before the answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import acp
from acp import schema as s

sys.path.insert(0, str(Path(__file__).resolve().parent))
from acp_agent import Scripted


class Hostile(Scripted):
    async def initialize(self, protocol_version: int, **kwargs: Any) -> s.InitializeResponse:
        err = self.script.get("initialize_error")
        if err:
            raise acp.RequestError(err["code"], err["message"], err.get("data"))
        raw = self.script.get("initialize_raw")
        if raw:
            w = self._writer()
            w.write(raw.encode() + b"\n")
            await w.drain()
        return await super().initialize(protocol_version, **kwargs)

    def _writer(self) -> asyncio.StreamWriter:
        writer: asyncio.StreamWriter = self.conn._conn._transport._sender._writer
        return writer

    async def _run(self, steps: list[dict[str, Any]], ctx: dict[str, Any]) -> str:
        stop = "end_turn"
        for step in steps:
            sid = ctx["sid"]
            if "raw" in step:
                w = self._writer()
                w.write(step["raw"].encode() + b"\n")
                await w.drain()
            elif "endless_line_mb" in step:
                w = self._writer()
                chunk = b"x" * (1 << 20)
                for _ in range(int(step["endless_line_mb"])):
                    w.write(chunk)
                    await w.drain()
                await asyncio.Event().wait()
            elif "tool_calls" in step:
                for _ in range(int(step["tool_calls"])):
                    await self._tool(sid, "read", "Read a.txt", None)
            elif "many_files" in step:
                folder = ctx["cwd"] / "f"
                folder.mkdir(exist_ok=True)
                for i in range(int(step["many_files"])):
                    (folder / f"{i}.txt").write_text(f"{i}\n")
            elif "failed_tool" in step:
                tid = await self._tool(sid, "edit", step["failed_tool"], None)
                content = (
                    [acp.tool_content(acp.text_block(step["content"]))]
                    if "content" in step
                    else None
                )
                await self._update(
                    sid,
                    acp.update_tool_call(
                        tid, status="failed", content=content, raw_output=step.get("raw_output")
                    ),
                )
            elif "raise" in step:
                e = step["raise"]
                raise acp.RequestError(e["code"], e["message"], e.get("data"))
            else:
                stop = await super()._run([step], ctx)
            if self.cancelled[sid].is_set():
                return "cancelled"
        return stop


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("ACP_AGENT_SCRIPT", "")
    script = json.loads(Path(path).read_text(encoding="utf-8")) if path else {}
    asyncio.run(acp.run_agent(Hostile(script)))


if __name__ == "__main__":
    main()
