"""The scripted endpoint's Gemini API: requests as Gemini CLI sends them, answers as it reads them.

The real judge is Gemini CLI itself (``test_gemini_lorch.py``); these tests pin
the shapes on plain HTTP: the request forms of Gemini CLI 0.61 (its session
context and the prompt as two user contents, ``functionCall`` /
``functionResponse`` parts, ``systemInstruction``), one JSON answer for
``generateContent``, server-sent events for ``streamGenerateContent?alt=sse``.
"""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest

from lorch.testing import gemini_api
from lorch.testing.model_endpoint import ModelEndpoint
from lorch.testing.model_script import Script

IK = "ik:" + "cd" * 32
CONTEXT = (
    "<session_context>\nThis is the Gemini CLI.\n- **Workspace Directories:**\n"
    "  - /work/space\n- **Directory Structure:**\n</session_context>"
)
STREAM = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"


@pytest.fixture
def endpoint() -> Iterator[ModelEndpoint]:
    script = Script.from_dict(
        {
            "steps": [
                {
                    "name": "route",
                    "when": {"system_contains": "Task Routing AI"},
                    "reply": [{"type": "text", "text": '{"complexity_score": 10}'}],
                },
                {
                    "name": "write",
                    "when": {"prompt_contains": IK, "turn": 0, "has_tools": True},
                    "reply": [
                        {"type": "text", "text": "Writing hello.py, which prints a greeting."},
                        {
                            "type": "tool_use",
                            "name": "write_file",
                            "input": {"file_path": "{cwd}/hello.py", "content": "print(1)\n"},
                        },
                    ],
                },
                {
                    "name": "failed",
                    "when": {"after_tool": "write_file", "tool_error": True},
                    "reply": [{"type": "text", "text": "It failed."}],
                },
                {
                    "name": "done",
                    "when": {"after_tool": "write_file", "tool_error": False},
                    "reply": [{"type": "text", "text": "Done."}],
                },
            ]
        }
    )
    with ModelEndpoint(script) as ep:
        yield ep


def _post(ep: ModelEndpoint, path: str, body: dict[str, Any]) -> tuple[int, str, bytes]:
    url = urlparse(ep.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type") or "", response.read()
    finally:
        conn.close()


def _events(data: bytes) -> list[dict[str, Any]]:
    """The JSON of each server-sent event (``data: ...`` then a blank line)."""
    out = []
    for event in data.decode().split("\r\n\r\n"):
        if event.strip():
            assert event.startswith("data: ")
            out.append(json.loads(event.removeprefix("data: ")))
    return out


def _user(*texts: str) -> dict[str, Any]:
    return {"role": "user", "parts": [{"text": t} for t in texts]}


def _main_body(contents: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "contents": contents,
        "systemInstruction": {"parts": [{"text": "You are an interactive CLI agent."}]},
        "tools": [{"functionDeclarations": [{"name": "write_file"}]}],
    }


def test_the_router_call_is_one_json_answer(endpoint: ModelEndpoint) -> None:
    body = {
        "contents": [_user(CONTEXT), _user(f"{IK} write hello")],
        "systemInstruction": {"parts": [{"text": "You are a specialized Task Routing AI."}]},
    }
    status, kind, data = _post(
        endpoint, "/v1beta/models/gemini-3.5-flash-lite:generateContent", body
    )
    assert (status, kind) == (200, "application/json")
    answer = json.loads(data)
    (candidate,) = answer["candidates"]
    assert candidate["content"] == {
        "role": "model",
        "parts": [{"text": '{"complexity_score": 10}'}],
    }
    assert candidate["finishReason"] == "STOP" and answer["usageMetadata"]["totalTokenCount"] > 0
    (record,) = endpoint.requests
    assert (record.step, record.model, record.stream, record.command, record.turn) == (
        "route", "gemini-3.5-flash-lite", False, IK, 0,
    )  # fmt: skip


def test_a_turn_streams_text_in_chunks_then_the_function_call(endpoint: ModelEndpoint) -> None:
    # The session context and the prompt arrive as parts of one user content.
    status, kind, data = _post(endpoint, STREAM, _main_body([_user(CONTEXT, f"{IK} write")]))
    assert (status, kind) == (200, "text/event-stream")
    events = _events(data)
    parts = [p for e in events for p in e["candidates"][0]["content"]["parts"]]
    text = "".join(p.get("text", "") for p in parts)
    assert text == "Writing hello.py, which prints a greeting."
    assert len([p for p in parts if "text" in p]) > 1  # chunked: the client joins them
    assert parts[-1] == {
        "functionCall": {
            "name": "write_file",
            "args": {"file_path": "/work/space/hello.py", "content": "print(1)\n"},
        }
    }  # {cwd} is the workspace directory of the session context
    assert [e["candidates"][0].get("finishReason") for e in events][-1] == "STOP"
    assert all("finishReason" not in e["candidates"][0] for e in events[:-1])
    assert endpoint.count(IK) == 1 and endpoint.requests[0].path == STREAM.split("?")[0]


@pytest.mark.parametrize(
    ("response", "step"),
    [({"output": "Successfully created hello.py"}, "done"), ({"error": "denied"}, "failed")],
)
def test_a_function_response_is_the_tool_result_it_answers(
    endpoint: ModelEndpoint, response: dict[str, Any], step: str
) -> None:
    call = {"functionCall": {"name": "write_file", "args": {"file_path": "x"}}}
    answer = {"functionResponse": {"name": "write_file", "response": response}}
    contents = [
        _user(CONTEXT, f"{IK} write"),
        {"role": "model", "parts": [{"text": "Writing."}, call]},
        {"role": "user", "parts": [answer]},
    ]
    status, _, _ = _post(endpoint, STREAM, _main_body(contents))
    assert status == 200
    (record,) = endpoint.requests
    assert (record.step, record.turn) == (step, 1)


def test_a_request_no_step_matches_is_a_gemini_error_naming_it(endpoint: ModelEndpoint) -> None:
    status, _, data = _post(endpoint, STREAM, _main_body([_user("something else")]))
    assert status == 400
    assert json.loads(data) == {
        "error": {
            "code": 400,
            "message": "no step of the model script matches",
            "status": "INVALID_ARGUMENT",
        }
    }
    assert [r.step for r in endpoint.requests] == ["unmatched"]


def test_only_generate_content_paths_are_model_calls() -> None:
    assert gemini_api.route("/v1beta/models/gemini-2.5-pro:generateContent") == (
        "gemini-2.5-pro",
        False,
    )
    assert gemini_api.route("/v1beta/models/m:streamGenerateContent") == ("m", True)
    assert gemini_api.route("/v1beta/models/m:countTokens") is None
    assert gemini_api.route("/v1/messages") is None


def test_malformed_contents_are_read_without_raising() -> None:
    conv = gemini_api.conversation(
        {
            "contents": [
                None,
                {"role": "model", "parts": "no"},
                {"parts": [1, {"functionResponse": {}}]},
            ],
            "systemInstruction": "not an object",
            "tools": [],
        }
    )
    assert conv.turn == 1 and conv.system == "" and not conv.has_tools
    assert conv.last_tool_result() == (None, False)
