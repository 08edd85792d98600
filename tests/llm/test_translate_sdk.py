"""The golden outputs as the official SDKs see them.

Every expected request, answer and stream whose target is chat, messages or responses is
checked against the ``openai`` / ``anthropic`` SDK types; streams are played to the real
SDK clients (their own SSE parsers and stream accumulators) through a fake upstream
transport, and what the client accumulates must match what the stream said.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx2
import openai
import pytest
from anthropic.types import Message
from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
from openai.types.chat import ChatCompletion
from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from openai.types.responses import Response
from openai.types.responses.response_create_params import ResponseCreateParamsNonStreaming
from pydantic import TypeAdapter

from tests.support import sse

GOLDEN = Path(__file__).resolve().parent.parent / "golden"

REQUESTS: dict[str, TypeAdapter[Any]] = {
    "chat": TypeAdapter(CompletionCreateParamsNonStreaming),
    "messages": TypeAdapter(MessageCreateParamsNonStreaming),
    "responses": TypeAdapter(ResponseCreateParamsNonStreaming),
}
RESPONSES: dict[str, type[Any]] = {
    "chat": ChatCompletion,
    "messages": Message,
    "responses": Response,
}


def _cases(kind: str) -> Iterator[Any]:
    for case in sorted(GOLDEN.glob(f"*_to_*/{kind}_*")):
        dst = case.parent.name.split("_to_")[1]
        if dst in REQUESTS:
            yield pytest.param(case, dst, id=f"{case.parent.name}/{case.name}")


def _transport(body: bytes, ctype: str) -> httpx2.Client:
    def answer(request: httpx2.Request) -> httpx2.Response:
        return httpx2.Response(200, content=body, headers={"content-type": ctype})

    return httpx2.Client(transport=httpx2.MockTransport(answer))


@pytest.mark.parametrize(("case", "dst"), list(_cases("request")))
def test_requests_match_sdk_params(case: Path, dst: str) -> None:
    body = json.loads((case / "expected.json").read_text())
    body.pop("stream", None)  # the non-streaming params type; stream itself is checked below
    body.pop("stream_options", None)
    REQUESTS[dst].validate_python(body, strict=True)


@pytest.mark.parametrize(("case", "dst"), list(_cases("response")))
def test_responses_match_sdk_models(case: Path, dst: str) -> None:
    body = json.loads((case / "expected.json").read_text())
    RESPONSES[dst].model_validate(body, strict=True)


def _stream_summary(case: Path) -> tuple[str, list[tuple[str, Any]], bool]:
    """Text, tool calls and whether the stream ended in an error, read off the SSE directly."""
    text, calls, failed = "", [], False
    events = sse.parse((case / "expected.sse").read_text())
    for name, data in events:
        if data == "[DONE]":
            continue
        ev = json.loads(data)
        kind = ev.get("type") or name
        if ("error" in ev and kind in (None, "error")) or kind in ("error", "response.failed"):
            failed = True
        delta = (ev.get("choices") or [{}])[0].get("delta", {}) if "choices" in ev else {}
        text += delta.get("content") or ""
        for tc in delta.get("tool_calls") or []:
            if "id" in tc:
                calls.append([tc["function"]["name"], ""])
            calls[-1][1] += tc["function"].get("arguments", "")
        if kind == "content_block_delta" and ev["delta"]["type"] == "text_delta":
            text += ev["delta"]["text"]
        if kind == "content_block_start" and ev["content_block"]["type"] == "tool_use":
            calls.append([ev["content_block"]["name"], ""])
        if kind == "content_block_delta" and ev["delta"]["type"] == "input_json_delta":
            calls[-1][1] += ev["delta"]["partial_json"]
        if kind == "response.output_text.delta":
            text += ev["delta"]
        if kind == "response.output_item.added" and ev["item"]["type"] == "function_call":
            calls.append([ev["item"]["name"], ""])
        if kind == "response.function_call_arguments.delta":
            calls[-1][1] += ev["delta"]
    return text, [(n, json.loads(a or "{}")) for n, a in calls], failed


@pytest.mark.parametrize(("case", "dst"), list(_cases("stream")))
def test_streams_play_to_sdk_clients(case: Path, dst: str) -> None:
    raw = (case / "expected.sse").read_bytes()
    text, calls, failed = _stream_summary(case)
    http = _transport(raw, "text/event-stream")
    got_text: str
    got_calls: list[tuple[str, Any]]
    if dst == "messages":
        client = anthropic.Anthropic(api_key="k", base_url="http://upstream", http_client=http)
        with client.messages.stream(
            model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
        ) as stream:
            if failed:
                with pytest.raises(anthropic.APIError):
                    stream.get_final_message()
                return
            msg = stream.get_final_message()
        got_text = "".join(b.text for b in msg.content if b.type == "text")
        got_calls = [(b.name, b.input) for b in msg.content if b.type == "tool_use"]
        assert msg.usage.output_tokens >= 0
    elif dst == "chat":
        oclient = openai.OpenAI(api_key="k", base_url="http://upstream/v1", http_client=http)
        with oclient.chat.completions.stream(
            model="m", messages=[{"role": "user", "content": "hi"}]
        ) as cstream:
            if failed:
                with pytest.raises(openai.APIError):
                    cstream.get_final_completion()
                return
            completion = cstream.get_final_completion()
        message = completion.choices[0].message
        got_text = message.content or ""
        got_calls = [
            (c.function.name, json.loads(c.function.arguments))
            for c in message.tool_calls or []
            if c.type == "function"
        ]
    else:
        oclient = openai.OpenAI(api_key="k", base_url="http://upstream/v1", http_client=http)
        with oclient.responses.stream(model="m", input="hi") as rstream:
            events = list(rstream)
            if failed:
                assert events[-1].type == "response.failed"
                return
            response = rstream.get_final_response()
        got_text = response.output_text
        got_calls = [
            (item.name, json.loads(item.arguments))
            for item in response.output
            if item.type == "function_call"
        ]
    assert not failed
    assert got_text == text
    assert got_calls == calls


def _gemini_cases() -> Iterator[Any]:
    for case in sorted(GOLDEN.glob("*_to_gemini/*")):
        yield pytest.param(case, id=f"{case.parent.name}/{case.name}")


@pytest.mark.parametrize("case", list(_gemini_cases()))
def test_gemini_outputs_match_genai_types(case: Path) -> None:
    """google-genai's models forbid unknown fields: every name we write must be Gemini's."""
    genai = pytest.importorskip("google.genai.types", reason="google-genai is not installed")
    if case.name.startswith("stream_"):
        for _, data in sse.parse((case / "expected.sse").read_text()):
            genai.GenerateContentResponse.model_validate_json(data)
        return
    body = json.loads((case / "expected.json").read_text())
    if case.name.startswith("response_"):
        genai.GenerateContentResponse.model_validate(body)
        return
    fields = {
        "systemInstruction": genai.Content,
        "toolConfig": genai.ToolConfig,
        "generationConfig": genai.GenerationConfig,
    }
    assert set(body) <= {"contents", "tools", *fields}
    for content in body["contents"]:
        genai.Content.model_validate_json(json.dumps(content))
    for tool in body.get("tools", []):
        genai.Tool.model_validate_json(json.dumps(tool))
    for name, model in fields.items():
        if name in body:
            model.model_validate_json(json.dumps(body[name]))
