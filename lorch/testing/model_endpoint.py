"""A scripted model endpoint: the Anthropic Messages, Gemini and OpenAI Responses APIs.

It lets a real coding agent (Claude Code through its ACP adapter, or anything
that talks to ``ANTHROPIC_BASE_URL``; Gemini CLI through ``GOOGLE_GEMINI_BASE_URL``,
see :mod:`lorch.testing.gemini_api`; Codex through a model provider whose
``base_url`` it is, see :mod:`lorch.testing.openai_api`) run offline and deterministically: every
``POST /v1/messages`` is answered by the first step of a script whose conditions
match the request, streamed as the real API streams (``message_start``,
``content_block_start`` / ``content_block_delta`` (``text_delta``,
``input_json_delta``) / ``content_block_stop``, ``message_delta`` with the stop
reason, ``message_stop``), or as one JSON message when the request does not ask
for a stream. ``count_tokens`` and the model list are answered too. Every request
is a record (and a JSON line in the log file): when, what path, which step
answered, which lorch command it belongs to (found in the conversation's text
by ``command_pattern``), so a test can count the requests of each command.

A step can *hold* its answer: it streams the start of the message and then waits
until :meth:`ModelEndpoint.release` or the client goes away. A test waits for
that moment (:meth:`ModelEndpoint.wait_held`) to kill a run mid-turn without
guessing at timing.

What a script may say is described in :mod:`lorch.testing.model_script`.

Use it from Python (``with ModelEndpoint(Script.load(path), log=...) as ep:``)
or as ``python -m lorch.testing.model_endpoint SCRIPT [--port N] [--log FILE]``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

from lorch.testing import gemini_api, model_stream, openai_api
from lorch.testing.model_script import Conversation, Script, ScriptError, Step, fill, matches

MODELS = (
    ("claude-sonnet-4-5", "Claude Sonnet 4.5"),
    ("claude-opus-4-1", "Claude Opus 4.1"),
    ("claude-haiku-4-5", "Claude Haiku 4.5"),
)
MAX_BODY = 64 * 1024 * 1024


def is_model_call(path: str) -> bool:
    """Whether ``path`` is a model call (Messages, Gemini's generateContent, Responses)."""
    return path in ("/v1/messages", openai_api.PATH) or gemini_api.route(path) is not None


@dataclass(frozen=True)
class Request:
    """One request the endpoint received, as the log records it."""

    seq: int
    time: str
    method: str
    path: str
    status: int
    step: str | None = None
    command: str | None = None
    turn: int | None = None
    model: str | None = None
    stream: bool = False
    held: bool = False
    note: str = ""


# --- the endpoint ---------------------------------------------------------------------


class ModelEndpoint:
    """The scripted endpoint, served on a thread; a context manager."""

    def __init__(
        self,
        script: Script,
        *,
        log: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.script = script
        self._pattern = re.compile(script.command_pattern)
        self._log_path = Path(log) if log is not None else None
        self._cond = threading.Condition()
        self._records: list[Request] = []
        self._used: dict[str, int] = {}
        self._holding: list[int] = []  # write ends of the pipes that wake held answers
        self._closed = False
        self._seq = 0  # numbers the records
        self._ids = 0  # numbers message, tool-use and request ids
        self._server = _Server((host, port), _Handler)
        self._server.endpoint = self
        self._thread: threading.Thread | None = None

    # lifecycle

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ModelEndpoint:
        # A short poll interval: close() (shutdown) waits for the loop to look.
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name="model-endpoint",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        with self._cond:
            self._closed = True
        self.release()
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join()

    def __enter__(self) -> ModelEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # what tests look at

    @property
    def requests(self) -> list[Request]:
        with self._cond:
            return list(self._records)

    def count(self, command: str | None = None, *, step: str | None = None) -> int:
        """How many Messages requests were answered for ``command`` (and by ``step``)."""
        return sum(
            1
            for r in self.requests
            if is_model_call(r.path)
            and (command is None or r.command == command)
            and (step is None or r.step == step)
        )

    def wait_for(self, predicate: Callable[[Request], bool], timeout: float) -> Request:
        """The first request satisfying ``predicate``, waiting up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for record in self._records:
                    if predicate(record):
                        return record
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = ", ".join(f"{r.path}→{r.step}" for r in self._records) or "none"
                    raise TimeoutError(f"no such request within {timeout:g}s (seen: {seen})")
                self._cond.wait(left)

    def wait_held(self, step: str, timeout: float) -> Request:
        """Wait until an answer of ``step`` is being held mid-stream."""
        return self.wait_for(lambda r: r.held and r.step == step, timeout)

    def release(self) -> None:
        """Let every held answer finish streaming."""
        # Written under the lock: a handler closes its pipe only after taking it
        # out of the list, so a descriptor number is never written after reuse.
        with self._cond:
            for fd in self._holding:
                os.write(fd, b"x")
            self._holding = []

    # used by the handler

    def _record(self, request: Request) -> None:
        with self._cond:
            self._records.append(request)
            if self._log_path is not None:
                line = json.dumps(asdict(request), separators=(",", ":"), sort_keys=True)
                with open(self._log_path, "a", encoding="utf-8") as fh:
                    fh.write(line + "\n")
            self._cond.notify_all()

    def _next_seq(self) -> int:
        with self._cond:
            self._seq += 1
            return self._seq

    def _next_id(self) -> int:
        with self._cond:
            self._ids += 1
            return self._ids

    def _choose(self, conv: Conversation) -> tuple[Step | None, bool]:
        """The step that answers ``conv`` (None: fallback or unmatched), and whether to hold."""
        with self._cond:
            for step in self.script.steps:
                used = self._used.get(step.name, 0)
                if step.times is not None and used >= step.times:
                    continue
                if matches(step.when, conv):
                    self._used[step.name] = used + 1
                    return step, used < step.hold and not self._closed
        return None, False

    def _hold_pipe(self) -> tuple[int, int]:
        r, w = os.pipe()
        with self._cond:
            if self._closed:
                os.write(w, b"x")
            self._holding.append(w)
        return r, w

    def _drop_hold(self, w: int) -> None:
        with self._cond:
            if w in self._holding:
                self._holding.remove(w)

    def _command_of(self, conv: Conversation) -> str | None:
        match = self._pattern.search(conv.all_text())
        return match.group(0) if match else None

    def _message_id(self) -> str:
        return f"msg_{self._next_id():024d}"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    endpoint: ModelEndpoint


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the endpoint's own log records every request

    @property
    def ep(self) -> ModelEndpoint:
        return self.server.endpoint

    def _now(self) -> str:
        return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def _send_json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", f"req_{self.ep._next_id():020d}")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, kind: str, message: str) -> None:
        self._send_json(status, {"type": "error", "error": {"type": kind, "message": message}})

    def _gemini_error(self, status: int, kind: str, message: str) -> None:
        self._send_json(status, gemini_api.error(status, message))

    def _openai_error(self, status: int, kind: str, message: str) -> None:
        self._send_json(status, openai_api.error(status, message))

    def _body(self) -> dict[str, Any] | None:
        try:
            length = int(self.headers.get("Content-Length", "0"))
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY:
            return None
        raw = self.rfile.read(length)
        try:
            body = json.loads(raw or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        return body if isinstance(body, dict) else None

    def _plain(self, status: int, note: str = "") -> Request:
        return Request(
            seq=self.ep._next_seq(),
            time=self._now(),
            method=self.command,
            path=self.path,
            status=status,
            note=note,
        )

    # stray traffic: an agent told to use this endpoint as its proxy shows where else it goes

    def _stray(self) -> bool:
        """Refuse (and log) a request meant for another host; False if it is ours."""
        if self.command != "CONNECT" and not self.path.startswith(("http://", "https://")):
            return False
        self.ep._record(self._plain(403, f"stray {self.command} {self.path}"))
        self._error(403, "permission_error", "offline: only the model endpoint is reachable")
        self.close_connection = True
        return True

    def do_CONNECT(self) -> None:
        self._stray()

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if self._stray():
            return
        if path == "/v1/models":
            data = [self._model(mid, name) for mid, name in MODELS]
            self.ep._record(self._plain(200))
            self._send_json(
                200,
                {
                    "data": data,
                    "has_more": False,
                    "first_id": data[0]["id"],
                    "last_id": data[-1]["id"],
                },
            )
            return
        if path.startswith("/v1/models/"):
            mid = path.removeprefix("/v1/models/")
            names = dict(MODELS)
            self.ep._record(self._plain(200))
            self._send_json(200, self._model(mid, names.get(mid, mid)))
            return
        self.ep._record(self._plain(404, "unknown path"))
        self._error(404, "not_found_error", f"the scripted endpoint does not serve {path}")

    @staticmethod
    def _model(mid: str, name: str) -> dict[str, Any]:
        return {
            "type": "model",
            "id": mid,
            "display_name": name,
            "created_at": "2025-01-01T00:00:00Z",
        }

    def do_HEAD(self) -> None:
        self.ep._record(self._plain(200))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        if self._stray():
            return
        body = self._body()
        if body is None:
            self.ep._record(self._plain(400, "body is not a JSON object"))
            self._error(400, "invalid_request_error", "the body is not a JSON object")
            return
        if path == "/v1/messages/count_tokens":
            self.ep._record(self._plain(200))
            self._send_json(200, {"input_tokens": max(1, len(json.dumps(body)) // 4)})
            return
        gemini = gemini_api.route(path)
        if gemini is not None:
            self._gemini(path, body, *gemini)
            return
        if path == openai_api.PATH:
            self._responses(body)
            return
        if path != "/v1/messages":
            self.ep._record(self._plain(404, "unknown path"))
            self._error(404, "not_found_error", f"the scripted endpoint does not serve {path}")
            return
        self._messages(body)

    def _gemini(self, path: str, body: dict[str, Any], model: str, stream: bool) -> None:
        """A Gemini ``generateContent`` / ``streamGenerateContent`` request."""
        conv = gemini_api.conversation(body)
        answer = self._answer(conv, body, path=path, model=model, stream=stream, gemini=True)
        if answer is None:
            return
        base, blocks, _stop, hold = answer
        usage = (max(1, len(json.dumps(body)) // 4), max(1, len(json.dumps(blocks)) // 4))
        if not stream:
            self.ep._record(base)
            self._send_json(200, gemini_api.message(blocks, model, usage))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = gemini_api.events(blocks, model, usage)
        if hold:
            self._chunk(next(events))
            if not self._hold(replace(base, held=True)):
                return
        else:
            self.ep._record(base)
        self._finish(events)

    def _responses(self, body: dict[str, Any]) -> None:
        """An OpenAI Responses ``POST /v1/responses`` request."""
        conv = openai_api.conversation(body)
        answer = self._answer(
            conv, body, path=openai_api.PATH, refuse=self._openai_error, tool_ids="call"
        )
        if answer is None:
            return
        base, blocks, _stop, hold = answer
        usage = (max(1, len(json.dumps(body)) // 4), max(1, len(json.dumps(blocks)) // 4))
        model = base.model or self.ep.script.model
        response_id = f"resp_{self.ep._next_id():024d}"
        custom = openai_api.custom_tools(body)
        if not base.stream:
            self.ep._record(base)
            self._send_json(200, openai_api.response(response_id, blocks, model, usage, custom))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        events = openai_api.events(response_id, blocks, model, usage, custom)
        if hold:
            self._chunk(next(events))
            if not self._hold(replace(base, held=True)):
                return
        else:
            self.ep._record(base)
        self._finish(events)

    def _finish(self, events: Iterator[bytes]) -> None:
        try:
            for event in events:
                self._chunk(event)
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def _messages(self, body: dict[str, Any]) -> None:
        conv = Conversation.of(body)
        answer = self._answer(conv, body)
        if answer is None:
            return
        base, blocks, stop, hold = answer
        usage_in = max(1, len(json.dumps(body)) // 4)
        usage_out = max(1, len(json.dumps(blocks)) // 4)
        message_id = self.ep._message_id()
        model = base.model or self.ep.script.model
        if not base.stream:
            self.ep._record(base)
            self._send_json(
                200, model_stream.message(message_id, model, blocks, stop, usage_in, usage_out)
            )
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("request-id", f"req_{self.ep._next_id():020d}")
        self.end_headers()
        events = model_stream.events(message_id, model, blocks, stop, usage_in, usage_out)
        if hold:
            # Stream the start of the message, then stall: the agent is mid-turn.
            self._chunk(next(events) + next(events) + next(events))
            if not self._hold(replace(base, held=True)):
                return
        else:
            self.ep._record(base)
        self._finish(events)

    def _answer(
        self,
        conv: Conversation,
        body: dict[str, Any],
        *,
        path: str = "/v1/messages",
        model: str | None = None,
        stream: bool | None = None,
        gemini: bool = False,
        refuse: Callable[[int, str, str], None] | None = None,
        tool_ids: str = "toolu",
    ) -> tuple[Request, list[dict[str, Any]], str, bool] | None:
        """The record, blocks, stop reason and hold answering ``conv``; None once refused."""
        ep = self.ep
        raw_model = body.get("model") if model is None else model
        step, hold = ep._choose(conv)
        base = Request(
            seq=ep._next_seq(),
            time=self._now(),
            method="POST",
            path=path,
            status=200,
            command=ep._command_of(conv),
            turn=conv.turn,
            model=raw_model if isinstance(raw_model, str) else ep.script.model,
            stream=body.get("stream") is True if stream is None else stream,
        )
        if refuse is None:
            refuse = self._gemini_error if gemini else self._error
        if step is not None:
            reply, stop, name = step.reply, step.stop_reason, step.name
        elif ep.script.fallback is not None:
            reply, stop, name = ep.script.fallback, None, "fallback"
        else:
            ep._record(replace(base, status=400, step="unmatched", note=conv.last[:200]))
            refuse(400, "invalid_request_error", "no step of the model script matches")
            return None
        base = replace(base, step=name)
        try:
            blocks = [cast(dict[str, Any], fill(b, conv.cwd())) for b in reply]
        except ScriptError as exc:
            ep._record(replace(base, status=400, note=str(exc)))
            refuse(400, "invalid_request_error", str(exc))
            return None
        for block in blocks:
            if block["type"] == "tool_use":
                block["id"] = f"{tool_ids}_{ep._next_id():020d}"
        if stop is None:
            stop = "tool_use" if any(b["type"] == "tool_use" for b in blocks) else "end_turn"
        return base, blocks, stop, hold

    def _hold(self, record: Request) -> bool:
        """Hold the answer until released; False if the client went away meanwhile."""
        r, w = self.ep._hold_pipe()
        self.ep._record(record)
        try:
            while True:
                ready, _, _ = select.select([self.connection, r], [], [])
                if r in ready:
                    return True
                try:
                    peek = self.connection.recv(1, socket.MSG_PEEK)
                except OSError:
                    peek = b""
                if not peek:
                    self.close_connection = True
                    return False
        finally:
            self.ep._drop_hold(w)
            os.close(r)
            os.close(w)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lorch.testing.model_endpoint",
        description="Serve a scripted Anthropic Messages endpoint on 127.0.0.1.",
    )
    parser.add_argument("script", help="the model script (JSON)")
    parser.add_argument("--port", type=int, default=0, help="port (default: any free one)")
    parser.add_argument("--log", help="append one JSON line per request to this file")
    args = parser.parse_args(argv)
    try:
        script = Script.load(args.script)
    except ScriptError as exc:
        print(f"model endpoint: {exc}", file=sys.stderr)
        return exc.exit_code
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with ModelEndpoint(script, log=args.log, port=args.port) as endpoint:
        print(endpoint.url, flush=True)
        stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
