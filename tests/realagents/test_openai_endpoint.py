"""The scripted endpoint's OpenAI Responses API: requests as Codex sends them, as it reads answers.

The real judge is Codex itself (``test_codex_lorch.py``); these tests pin the
shapes on plain HTTP: the request forms of codex-acp 0.16 (``instructions``, a
``developer`` message, its environment context and the prompt as two user
messages, ``function_call`` / ``custom_tool_call`` items and their outputs),
server-sent events for a streamed ``POST /v1/responses``, one JSON ``Response``
otherwise.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from lorch.testing import openai_api
from lorch.testing.model_endpoint import ModelEndpoint, is_model_call
from lorch.testing.model_script import Script

IK = "ik:" + "ef" * 32
CONTEXT = (
    "<environment_context>\n  <cwd>/work/space</cwd>\n  <shell>bash</shell>\n</environment_context>"
)
PATCH = "*** Begin Patch\n*** Add File: hello.py\n+print(1)\n*** End Patch\n"
TOOLS = [
    {"type": "function", "name": "exec_command", "parameters": {"type": "object"}},
    {"type": "custom", "name": "apply_patch", "format": {"type": "grammar"}},
]


@pytest.fixture
def endpoint() -> Iterator[ModelEndpoint]:
    script = Script.from_dict(
        {
            "model": "gpt-5.3-codex",
            "steps": [
                {
                    "name": "patch",
                    "when": {"prompt_contains": IK, "turn": 0, "has_tools": True},
                    "reply": [
                        {"type": "text", "text": "Writing hello.py, which prints a greeting."},
                        {"type": "tool_use", "name": "apply_patch", "input": {"input": PATCH}},
                    ],
                },
                {
                    "name": "run",
                    "when": {"after_tool": "apply_patch", "tool_error": False},
                    "reply": [
                        {
                            "type": "tool_use",
                            "name": "exec_command",
                            "input": {"cmd": "python3 hello.py", "workdir": "{cwd}"},
                        }
                    ],
                },
                {
                    "name": "failed",
                    "when": {"tool_error": True},
                    "reply": [{"type": "text", "text": "It failed."}],
                },
                {
                    "name": "done",
                    "when": {"after_tool": "exec_command", "tool_error": False},
                    "reply": [{"type": "text", "text": "Done."}],
                },
            ],
        }
    )
    with ModelEndpoint(script) as ep:
        yield ep


def _post(ep: ModelEndpoint, body: dict[str, Any]) -> tuple[int, str, bytes]:
    url = urlparse(ep.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.request(
            "POST", openai_api.PATH, json.dumps(body), {"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


def _events(data: bytes) -> list[dict[str, Any]]:
    """Each server-sent event's data, checked against its ``event:`` line."""
    out = []
    for event in data.decode().split("\n\n"):
        if event.strip():
            name, payload = event.split("\n")
            parsed = json.loads(payload.removeprefix("data: "))
            assert name == f"event: {parsed['type']}"
            out.append(parsed)
    return out


def _message(role: str, text: str) -> dict[str, Any]:
    kind = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": kind, "text": text}]}


def _body(items: list[dict[str, Any]], *, stream: bool = True) -> dict[str, Any]:
    return {
        "model": "gpt-5.3-codex",
        "instructions": "You are a coding agent running in the Codex CLI.",
        "input": [
            _message("developer", "<permissions instructions>read-only"),
            _message("user", CONTEXT),
            *items,
        ],
        "tools": TOOLS,
        "stream": stream,
    }


def test_a_turn_streams_text_in_chunks_then_the_freeform_tool_call(
    endpoint: ModelEndpoint,
) -> None:
    status, kind, data = _post(endpoint, _body([_message("user", f"{IK} write hello")]))
    assert (status, kind) == (200, "text/event-stream")
    events = _events(data)
    types = [e["type"] for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    deltas = [e["delta"] for e in events if e["type"] == "response.output_text.delta"]
    assert "".join(deltas) == "Writing hello.py, which prints a greeting." and len(deltas) > 1
    done = [e["item"] for e in events if e["type"] == "response.output_item.done"]
    assert done[0]["type"] == "message" and done[0]["role"] == "assistant"
    assert done[0]["content"][0]["text"] == "Writing hello.py, which prints a greeting."
    # apply_patch is declared freeform ("custom"): its input is the patch itself.
    assert {k: done[1][k] for k in ("type", "name", "input")} == {
        "type": "custom_tool_call",
        "name": "apply_patch",
        "input": PATCH,
    }
    completed = events[-1]["response"]
    assert completed["status"] == "completed" and completed["output"] == done
    assert completed["usage"]["total_tokens"] > 0
    (record,) = endpoint.requests
    assert (record.step, record.model, record.stream, record.command, record.turn) == (
        "patch", "gpt-5.3-codex", True, IK, 0,
    )  # fmt: skip


def _after_patch(output: str) -> list[dict[str, Any]]:
    return [
        _message("user", f"{IK} write hello"),
        _message("assistant", "Writing."),
        {"type": "custom_tool_call", "call_id": "c1", "name": "apply_patch", "input": PATCH},
        {"type": "custom_tool_call_output", "call_id": "c1", "output": output},
    ]


def test_a_function_call_carries_its_input_as_json_arguments(endpoint: ModelEndpoint) -> None:
    ok = "Exit code: 0\nWall time: 0 seconds\nOutput:\nSuccess. Updated the following files:\n"
    _, _, data = _post(endpoint, _body(_after_patch(ok)))
    (item,) = [e["item"] for e in _events(data) if e["type"] == "response.output_item.done"]
    assert item["type"] == "function_call" and item["name"] == "exec_command"
    # {cwd} is the working directory of the environment context.
    assert json.loads(item["arguments"]) == {"cmd": "python3 hello.py", "workdir": "/work/space"}
    assert item["call_id"].startswith("call_")
    (record,) = endpoint.requests
    assert (record.step, record.turn) == ("run", 1)


@pytest.mark.parametrize(
    ("output", "step"),
    [
        ("Chunk ID: 1\nProcess exited with code 0\nOutput:\nhello\n", "done"),
        ("Chunk ID: 1\nProcess exited with code 1\nOutput:\nTraceback\n", "failed"),
        ({"content": "Process exited with code 2", "success": None}, "failed"),
        ({"content": "denied", "success": False}, "failed"),
    ],
)
def test_a_command_s_output_is_an_error_when_it_exited_non_zero(
    endpoint: ModelEndpoint, output: object, step: str
) -> None:
    items = [
        *_after_patch("Exit code: 0\nOutput:\nSuccess.\n"),
        {"type": "function_call", "call_id": "c2", "name": "exec_command", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c2", "output": output},
    ]
    status, _, _ = _post(endpoint, _body(items))
    assert status == 200
    (record,) = endpoint.requests
    assert (record.step, record.turn) == (step, 2)


def test_a_failed_patch_is_an_error(endpoint: ModelEndpoint) -> None:
    _post(endpoint, _body(_after_patch("Exit code: 1\nOutput:\nverification failed\n")))
    assert [r.step for r in endpoint.requests] == ["failed"]


def test_without_stream_the_answer_is_one_response(endpoint: ModelEndpoint) -> None:
    status, kind, data = _post(
        endpoint, _body([_message("user", f"{IK} write hello")], stream=False)
    )
    assert (status, kind) == (200, "application/json")
    answer = json.loads(data)
    assert answer["object"] == "response" and answer["status"] == "completed"
    assert [i["type"] for i in answer["output"]] == ["message", "custom_tool_call"]


def test_a_request_no_step_matches_is_an_openai_error_naming_it(endpoint: ModelEndpoint) -> None:
    status, _, data = _post(endpoint, _body([_message("user", "something else")]))
    assert status == 400
    assert json.loads(data) == {
        "error": {
            "message": "no step of the model script matches",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    assert [r.step for r in endpoint.requests] == ["unmatched"]
    assert endpoint.count(step="unmatched") == 1  # a model call, counted as one


def test_only_the_responses_path_is_an_openai_model_call() -> None:
    assert is_model_call("/v1/responses")
    assert not is_model_call("/v1/responses/resp_1") and not is_model_call("/v1/chat/completions")


def test_malformed_input_is_read_without_raising() -> None:
    conv = openai_api.conversation(
        {
            "instructions": 3,
            "input": [
                None,
                {"type": "message", "role": "assistant", "content": "no list"},
                {"type": "function_call", "call_id": 1, "arguments": "not json"},
                {"type": "function_call_output", "output": ["x", 2]},
                {"type": "reasoning", "summary": []},
            ],
            "tools": [],
        }
    )
    assert conv.turn == 1 and conv.system == "" and not conv.has_tools
    assert conv.messages[0]["content"][1]["input"] == {"input": "not json"}
    assert conv.last_tool_result() == (None, False)  # an output answering no call
    assert openai_api.conversation({"input": "just text"}).prompt == "just text"
