"""The scripted model endpoint, checked with Anthropic's own Python client.

The client is the independent judge: if it parses the stream into the scripted
message, the endpoint speaks the Messages API as an agent expects.
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lorch.testing.model_endpoint import ModelEndpoint
from lorch.testing.model_script import Script, ScriptError
from tests.conftest import examples

IK = "ik:" + "ab" * 32
CWD_SYSTEM = "You are an agent.\n - Primary working directory: /work/space\n"


def _script(steps: list[dict[str, Any]], **extra: Any) -> Script:
    return Script.from_dict({"steps": steps, **extra})


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[ModelEndpoint] = []

    def start(script: Script, **kwargs: Any) -> ModelEndpoint:
        endpoint = ModelEndpoint(script, **kwargs).start()
        started.append(endpoint)
        return endpoint

    yield start
    for endpoint in started:
        endpoint.close()


_HTTP: list[anthropic.DefaultHttpxClient] = []


def _client(endpoint: ModelEndpoint) -> anthropic.Anthropic:
    # One HTTP client for the module (making one costs more than a request).
    if not _HTTP:
        _HTTP.append(anthropic.DefaultHttpxClient())
    return anthropic.Anthropic(
        base_url=endpoint.url, api_key="dummy", max_retries=0, http_client=_HTTP[0]
    )


@pytest.fixture(autouse=True, scope="module")
def _close_http() -> Iterator[None]:
    yield
    while _HTTP:
        _HTTP.pop().close()


def _ask(
    endpoint: ModelEndpoint,
    messages: list[dict[str, Any]],
    *,
    system: str = CWD_SYSTEM,
    tools: bool = True,
) -> anthropic.types.Message:
    extra: dict[str, Any] = {}
    if tools:
        extra["tools"] = [{"name": "Write", "input_schema": {"type": "object"}}]
    with _client(endpoint).messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        system=system,
        messages=messages,  # type: ignore[arg-type]
        **extra,
    ) as stream:
        return stream.get_final_message()


def test_stream_carries_text_and_tool_calls_as_the_api_does(serve: Any) -> None:
    tool_input = {"file_path": "{cwd}/hello.py", "content": "print('hello, world')\n" * 5}
    endpoint = serve(
        _script(
            [
                {
                    "name": "write",
                    "reply": [
                        {"type": "text", "text": "I will write hello.py for you, now."},
                        {"type": "tool_use", "name": "Write", "input": tool_input},
                    ],
                }
            ]
        )
    )
    events = []
    with _client(endpoint).messages.stream(
        model="claude-sonnet-4-5",
        max_tokens=1024,
        system=CWD_SYSTEM,
        messages=[{"role": "user", "content": "go"}],
    ) as stream:
        for event in stream:
            events.append(event.type)
        message = stream.get_final_message()
    assert message.stop_reason == "tool_use"
    assert message.content[0].type == "text"
    assert message.content[0].text == "I will write hello.py for you, now."
    call = message.content[1]
    assert call.type == "tool_use" and call.name == "Write"
    assert call.input == {
        "file_path": "/work/space/hello.py",
        "content": "print('hello, world')\n" * 5,
    }
    assert call.id.startswith("toolu_")
    # The raw events, in the order the API sends them (deltas split into several).
    raw = [e for e in events if e in _RAW_EVENTS]
    assert raw[0] == "message_start" and raw[-2:] == ["message_delta", "message_stop"]
    assert raw.count("content_block_start") == raw.count("content_block_stop") == 2
    assert raw.count("content_block_delta") > 2


_RAW_EVENTS = {
    "message_start",
    "content_block_start",
    "content_block_delta",
    "content_block_stop",
    "message_delta",
    "message_stop",
}


@settings(max_examples=examples(25), deadline=None)
@given(
    text=st.text(min_size=1, max_size=200),
    tool_input=st.dictionaries(
        st.text(min_size=1, max_size=10),
        st.one_of(st.text(max_size=80), st.integers(), st.booleans(), st.none()),
        max_size=5,
    ),
)
def test_any_reply_survives_the_streaming(text: str, tool_input: dict[str, Any]) -> None:
    # Braces are template syntax in replies; keep the property about streaming.
    text = text.replace("{", "(").replace("}", ")")
    tool_input = json.loads(json.dumps(tool_input).replace("{cwd}", "cwd"))
    script = _script(
        [
            {
                "name": "any",
                "reply": [
                    {"type": "text", "text": text},
                    {"type": "tool_use", "name": "T", "input": _escape(tool_input)},
                ],
            }
        ]
    )
    with ModelEndpoint(script) as endpoint:
        message = _ask(endpoint, [{"role": "user", "content": "x"}])
    assert [b.type for b in message.content] == ["text", "tool_use"]
    assert message.content[0].text == text  # type: ignore[union-attr]
    assert message.content[1].input == tool_input  # type: ignore[union-attr]


def _escape(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("{", "{{").replace("}", "}}")
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    return value


def test_without_stream_the_answer_is_one_message(serve: Any) -> None:
    endpoint = serve(_script([{"name": "hi", "reply": [{"type": "text", "text": "hi"}]}]))
    message = _client(endpoint).messages.create(
        model="claude-haiku-4-5", max_tokens=10, messages=[{"role": "user", "content": "x"}]
    )
    assert message.content[0].text == "hi"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.model == "claude-haiku-4-5"
    assert endpoint.requests[-1].stream is False


def _tool_turn(tool: str, *, error: bool = False) -> list[dict[str, Any]]:
    """A conversation whose last message is the result of one call to ``tool``."""
    return [
        {"role": "user", "content": f"task T-1 {IK}"},
        {
            "role": "assistant",
            "content": [{"type": "tool_use", "id": "toolu_1", "name": tool, "input": {}}],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "refused" if error else "done",
                    "is_error": error,
                }
            ],
        },
    ]


def test_steps_are_chosen_by_what_the_request_holds(serve: Any) -> None:
    def text(name: str) -> dict[str, Any]:
        return {"name": name, "reply": [{"type": "text", "text": name}]}

    endpoint = serve(
        _script(
            [
                {**text("side"), "when": {"has_tools": False}},
                {**text("first"), "when": {"prompt_contains": "T-1", "turn": 0}},
                {**text("refused"), "when": {"after_tool": "Write", "tool_error": True}},
                {**text("wrote"), "when": {"after_tool": "Write"}},
                {**text("said-done"), "when": {"contains": "done"}},
                {**text("sys"), "when": {"system_contains": "special"}},
            ]
        )
    )

    def answer(messages: list[dict[str, Any]], **kw: Any) -> str:
        return _ask(endpoint, messages, **kw).content[0].text  # type: ignore[union-attr]

    assert answer([{"role": "user", "content": "task T-1"}]) == "first"
    assert answer([{"role": "user", "content": "task T-1"}], tools=False) == "side"
    assert answer(_tool_turn("Write")) == "wrote"
    assert answer(_tool_turn("Write", error=True)) == "refused"
    assert answer(_tool_turn("Bash")) == "said-done"
    assert answer([{"role": "user", "content": "x"}], system="a special one") == "sys"
    assert [r.step for r in endpoint.requests] == [
        "first",
        "side",
        "wrote",
        "refused",
        "said-done",
        "sys",
    ]
    assert [r.turn for r in endpoint.requests] == [0, 0, 1, 1, 1, 0]


def test_times_makes_steps_answer_in_order_and_then_falls_back(serve: Any) -> None:
    endpoint = serve(
        _script(
            [
                {"name": "one", "times": 1, "reply": [{"type": "text", "text": "1"}]},
                {"name": "two", "times": 2, "reply": [{"type": "text", "text": "2"}]},
            ],
            fallback=[{"type": "text", "text": "enough"}],
        )
    )
    answers = [
        _ask(endpoint, [{"role": "user", "content": "x"}]).content[0].text  # type: ignore[union-attr]
        for _ in range(4)
    ]
    assert answers == ["1", "2", "2", "enough"]
    assert endpoint.requests[-1].step == "fallback"


def test_a_request_no_step_matches_is_an_api_error_the_log_names(serve: Any) -> None:
    endpoint = serve(_script([{"name": "only", "when": {"turn": 3}, "reply": [_TEXT]}]))
    with pytest.raises(anthropic.BadRequestError, match="no step of the model script matches"):
        _ask(endpoint, [{"role": "user", "content": "what now?"}])
    record = endpoint.requests[-1]
    assert (record.status, record.step, record.note) == (400, "unmatched", "what now?")


_TEXT = {"type": "text", "text": "t"}


def test_cwd_without_a_working_directory_is_refused_not_guessed(serve: Any) -> None:
    endpoint = serve(
        _script(
            [{"name": "w", "reply": [{"type": "tool_use", "name": "W", "input": {"p": "{cwd}"}}]}]
        )
    )
    with pytest.raises(anthropic.BadRequestError, match="names no working directory"):
        _ask(endpoint, [{"role": "user", "content": "x"}], system="no directory here")


def test_requests_are_counted_per_command_and_logged(serve: Any, tmp_path: Path) -> None:
    log = tmp_path / "requests.ndjson"
    other = "ik:" + "cd" * 32
    endpoint = serve(
        _script([{"name": "any", "reply": [_TEXT]}], fallback=[_TEXT]),
        log=log,
    )
    _ask(endpoint, [{"role": "user", "content": f"command {IK}"}])
    _ask(endpoint, _tool_turn("Write"))  # the key is in the first message
    _ask(endpoint, [{"role": "user", "content": f"command {other}"}])
    _client(endpoint).messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x"}]
    )
    assert endpoint.count(IK) == 2
    assert endpoint.count(other) == 1
    assert endpoint.count(IK, step="any") == 2
    assert endpoint.count() == 3  # count_tokens is not a turn of the model
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["command"] for line in lines] == [IK, IK, other, None]
    assert [line["path"] for line in lines][-1] == "/v1/messages/count_tokens"
    assert [line["seq"] for line in lines] == [1, 2, 3, 4]
    assert all(set(line) >= {"time", "path", "step", "command", "status"} for line in lines)


def test_command_pattern_is_the_scripts_choice(serve: Any) -> None:
    endpoint = serve(_script([{"name": "a", "reply": [_TEXT]}], command_pattern=r"T-\d+/r\d+"))
    _ask(endpoint, [{"role": "user", "content": "task T-7/r2, please"}])
    assert endpoint.requests[-1].command == "T-7/r2"


def test_count_tokens_and_models_answer_what_an_agent_asks_at_start(serve: Any) -> None:
    endpoint = serve(_script([]))
    client = _client(endpoint)
    tokens = client.messages.count_tokens(
        model="claude-sonnet-4-5", messages=[{"role": "user", "content": "x" * 400}]
    )
    assert tokens.input_tokens > 50
    models = [m.id for m in client.models.list()]
    assert "claude-sonnet-4-5" in models
    assert client.models.retrieve("claude-haiku-4-5").display_name == "Claude Haiku 4.5"


def test_traffic_through_the_endpoint_as_a_proxy_is_refused_and_logged(serve: Any) -> None:
    endpoint = serve(_script([]))
    host, port = endpoint.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("CONNECT", "example.com:443")
    assert conn.getresponse().status == 403
    conn.close()
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "http://example.com/x")
    assert conn.getresponse().status == 403
    conn.close()
    assert [r.note for r in endpoint.requests] == [
        "stray CONNECT example.com:443",
        "stray GET http://example.com/x",
    ]


def test_a_held_answer_waits_for_release_then_completes(serve: Any) -> None:
    endpoint = serve(
        _script([{"name": "slow", "hold": 1, "reply": [{"type": "text", "text": "at last"}]}])
    )
    result: list[str] = []
    worker = threading.Thread(
        target=lambda: result.append(
            _ask(endpoint, [{"role": "user", "content": "x"}]).content[0].text  # type: ignore[union-attr]
        )
    )
    worker.start()
    held = endpoint.wait_held("slow", timeout=30)
    assert held.held and result == []
    endpoint.release()
    worker.join(30)
    assert result == ["at last"]
    # Only the first answer is held.
    assert _ask(endpoint, [{"role": "user", "content": "y"}]).content[0].text == "at last"  # type: ignore[union-attr]
    assert [r.held for r in endpoint.requests] == [True, False]


def test_a_held_answer_ends_when_its_client_goes_away(serve: Any) -> None:
    endpoint = serve(_script([{"name": "slow", "hold": 5, "reply": [_TEXT]}]))
    host, port = endpoint.url.removeprefix("http://").split(":")
    body = json.dumps(
        {
            "model": "m",
            "max_tokens": 5,
            "stream": True,
            "messages": [{"role": "user", "content": "x"}],
        }
    ).encode()
    sock = socket.create_connection((host, int(port)), timeout=10)
    sock.sendall(
        b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    endpoint.wait_held("slow", timeout=30)
    head = sock.recv(65536)
    assert b"200 OK" in head and b"event: message_start" in head
    sock.close()
    # The endpoint is not stuck: a new request is answered (held, then released).
    worker = threading.Thread(target=lambda: _ask(endpoint, [{"role": "user", "content": "y"}]))
    worker.start()
    endpoint.wait_for(lambda r: r.seq == 2 and r.held, timeout=30)
    endpoint.release()
    worker.join(30)
    assert not worker.is_alive()


def test_closing_the_endpoint_releases_what_it_holds() -> None:
    endpoint = ModelEndpoint(_script([{"name": "slow", "hold": 1, "reply": [_TEXT]}])).start()
    worker = threading.Thread(target=lambda: _ask(endpoint, [{"role": "user", "content": "y"}]))
    worker.start()
    endpoint.wait_held("slow", timeout=30)
    endpoint.close()
    worker.join(30)
    assert not worker.is_alive()


def test_wait_for_says_what_it_saw_when_time_runs_out(serve: Any) -> None:
    endpoint = serve(_script([{"name": "a", "reply": [_TEXT]}]))
    _ask(endpoint, [{"role": "user", "content": "x"}])
    with pytest.raises(TimeoutError, match=r"seen: /v1/messages→a"):
        endpoint.wait_held("a", timeout=0.01)


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, r"script: \$: 'steps' is a required property"),
        ({"steps": [{"name": "a"}]}, r"\$\.steps\[0\]: 'reply' is a required property"),
        (
            {"steps": [{"name": "a", "reply": [_TEXT], "when": {"turns": 1}}]},
            r"\$\.steps\[0\]\.when: Additional properties .*'turns'",
        ),
        (
            {"steps": [{"name": "a", "reply": [_TEXT]}, {"name": "a", "reply": [_TEXT]}]},
            r"\$\.steps\[1\]\.name: 'a' is used twice",
        ),
        ({"steps": [], "command_pattern": "("}, r"\$\.command_pattern: not a regular expression"),
    ],
)
def test_a_bad_script_is_refused_naming_the_field(doc: Any, message: str) -> None:
    with pytest.raises(ScriptError, match=message):
        Script.from_dict(doc)


def test_the_command_line_serves_a_script_and_refuses_a_bad_one(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('{"steps": [{"name": 1}]}')
    proc = subprocess.run(
        [sys.executable, "-m", "lorch.testing.model_endpoint", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and f"{bad}: $.steps[0]" in proc.stderr

    good = tmp_path / "good.json"
    good.write_text(json.dumps({"steps": [{"name": "hi", "reply": [_TEXT]}]}))
    log = tmp_path / "log.ndjson"
    server = subprocess.Popen(
        [sys.executable, "-m", "lorch.testing.model_endpoint", str(good), "--log", str(log)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = server.stdout.readline().strip()
        with anthropic.Anthropic(base_url=url, api_key="dummy", max_retries=0) as client:
            message = client.messages.create(
                model="m", max_tokens=5, messages=[{"role": "user", "content": "x"}]
            )
        assert message.content[0].text == "t"  # type: ignore[union-attr]
    finally:
        server.terminate()
        assert server.wait(30) == 0
        assert server.stdout is not None
        server.stdout.close()
    assert json.loads(log.read_text())["step"] == "hi"


def test_braces_are_escaped_by_doubling_in_replies(serve: Any) -> None:
    endpoint = serve(
        _script(
            [
                {
                    "name": "t",
                    "reply": [
                        {
                            "type": "tool_use",
                            "name": "W",
                            "input": {"s": "{{cwd}} is {cwd}; }}{{ and {x}"},
                        }
                    ],
                }
            ]
        )
    )
    message = _ask(endpoint, [{"role": "user", "content": "x"}])
    assert message.content[0].input == {"s": "{cwd} is /work/space; }{ and {x}"}  # type: ignore[union-attr]
