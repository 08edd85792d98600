"""The fake LLM upstream (tests/fakes/llm_upstream.py), driven directly by the official SDKs.

These pin what the gateway's tests rely on: every answer parses with the real clients, token
counts follow the documented formula, and every knob does what it says.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.fakes.run import FakeUpstream, start_fake_upstream

REPO = Path(__file__).resolve().parent.parent
KEY = "sk-fake-test-key"
WEATHER_TOOL: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "weather for a city",
        "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
    },
}


def prompt(*texts: str) -> int:
    """The fake's formula: 7 + characters of all message text // 3."""
    return 7 + sum(len(t) for t in texts) // 3


def completion(reply: str) -> int:
    """The fake's formula: words in the reply + 3."""
    return len(reply.split()) + 3


@pytest.fixture(scope="module")
def fake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeUpstream]:
    with start_fake_upstream(tmp_path_factory.mktemp("fake")) as upstream:
        yield upstream


@pytest.fixture
def oai(fake: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"{fake.url}/v1", api_key=KEY, max_retries=0) as client:
        yield client


@pytest.fixture
def claude(fake: FakeUpstream) -> Iterator[anthropic.Anthropic]:
    with anthropic.Anthropic(base_url=fake.url, api_key=KEY, max_retries=0) as client:
        yield client


# ------------------------------------------------------------------------------ OpenAI chat


def test_chat_completion(oai: openai.OpenAI, fake: FakeUpstream) -> None:
    r = oai.chat.completions.create(
        model="fake-gpt",
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello world"},
        ],
    )
    assert r.id.startswith("chatcmpl-") and r.object == "chat.completion"
    assert r.created > 0 and r.system_fingerprint and r.model == "fake-gpt"
    assert r.choices[0].message.content == "echo: hello world"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.prompt_tokens == prompt("be brief", "hello world") == 13
    assert r.usage.completion_tokens == completion("echo: hello world") == 6
    assert r.usage.total_tokens == 19
    assert r.usage.prompt_tokens_details and r.usage.prompt_tokens_details.cached_tokens == 2
    details = r.usage.completion_tokens_details
    assert details and details.reasoning_tokens == 1

    logged = fake.requests()[-1]
    assert logged["method"] == "POST" and logged["path"] == "/v1/chat/completions"
    assert logged["headers"]["authorization"] == f"Bearer {KEY}"
    assert logged["body"]["messages"][1] == {"role": "user", "content": "hello world"}


def test_chat_stream_without_usage(oai: openai.OpenAI) -> None:
    chunks = list(
        oai.chat.completions.create(
            model="fake-gpt", messages=[{"role": "user", "content": "one two three"}], stream=True
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: one two three"
    assert len(chunks) == 1 + 4 + 1  # role, one chunk per word, finish
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    assert len({c.id for c in chunks}) == 1


def test_chat_stream_with_usage(oai: openai.OpenAI) -> None:
    stream = oai.chat.completions.create(
        model="fake-gpt",
        messages=[{"role": "user", "content": "one two three"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == prompt("one two three") == 11
    assert last.usage.completion_tokens == completion("echo: one two three") == 7
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_chat_stream_tool_call(oai: openai.OpenAI) -> None:
    messages: list[Any] = [{"role": "user", "content": "weather in Paris"}]
    chunks = list(
        oai.chat.completions.create(
            model="fake-gpt", messages=messages, tools=[WEATHER_TOOL], stream=True
        )
    )
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].id.startswith("call_")
    assert deltas[0].function and deltas[0].function.name == "get_weather"
    fragments = [d.function.arguments for d in deltas[1:] if d.function]
    assert len(fragments) == 3
    assert json.loads("".join(f or "" for f in fragments)) == {"text": "weather in Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"

    # non-stream: message.tool_calls; once a tool result is present: a plain answer
    r = oai.chat.completions.create(model="fake-gpt", messages=messages, tools=[WEATHER_TOOL])
    call = r.choices[0].message.tool_calls
    assert call and r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.content is None
    messages += [
        {"role": "assistant", "tool_calls": [call[0].model_dump()]},
        {"role": "tool", "tool_call_id": call[0].id, "content": "sunny"},
    ]
    r = oai.chat.completions.create(model="fake-gpt", messages=messages, tools=[WEATHER_TOOL])
    assert r.choices[0].message.content == "echo: weather in Paris"
    assert r.usage and r.usage.prompt_tokens == prompt("weather in Paris", "sunny")


# ------------------------------------------------------------------------- OpenAI responses


def test_responses(oai: openai.OpenAI) -> None:
    r = oai.responses.create(model="fake-gpt", instructions="terse", input="hi there")
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == "echo: hi there"
    assert r.usage is not None
    assert r.usage.input_tokens == prompt("terse", "hi there") == 11
    assert r.usage.output_tokens == completion("echo: hi there") == 6
    assert r.usage.total_tokens == 17
    assert r.usage.input_tokens_details.cached_tokens == 2
    assert r.usage.output_tokens_details.reasoning_tokens == 1


def test_responses_stream(oai: openai.OpenAI) -> None:
    with oai.responses.stream(model="fake-gpt", input="stream me please") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == "echo: stream me please"
    assert final.output_text == "echo: stream me please"
    assert final.usage and final.usage.input_tokens == prompt("stream me please")
    assert final.usage.output_tokens == completion("echo: stream me please")


def test_responses_function_call(oai: openai.OpenAI) -> None:
    tool: Any = {
        "type": "function",
        "name": "lookup",
        "parameters": {"type": "object", "properties": {}},
    }
    with oai.responses.stream(model="fake-gpt", input="find it", tools=[tool]) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_response()
    assert kinds.count("response.function_call_arguments.delta") == 3
    item = final.output[0]
    assert item.type == "function_call" and item.name == "lookup"
    assert json.loads(item.arguments) == {"text": "find it"}

    follow_up: Any = [
        {"role": "user", "content": "find it"},
        {"type": "function_call", "call_id": item.call_id, "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": item.call_id, "output": "found"},
    ]
    r = oai.responses.create(model="fake-gpt", input=follow_up, tools=[tool])
    assert r.output_text == "echo: find it"
    assert r.usage and r.usage.input_tokens == prompt("find it", "found")


def test_responses_call_of_a_namespaced_function(fake: FakeUpstream) -> None:
    # Codex offers an MCP server's tools as one namespace tool
    namespace = {
        "type": "namespace",
        "name": "mcp__agw",
        "tools": [{"type": "function", "name": "echo", "parameters": {"type": "object"}}],
    }
    body = {"model": "fake-gpt", "input": "say it", "tools": [namespace]}
    r = httpx.post(f"{fake.url}/v1/responses", json=body, timeout=10)
    (item,) = r.json()["output"]
    assert (item["type"], item["namespace"], item["name"]) == ("function_call", "mcp__agw", "echo")


# ------------------------------------------------------------------- OpenAI embeddings, models


def test_embeddings_and_models(oai: openai.OpenAI) -> None:
    # the SDK asks for base64 by default and decodes it; float must give the same numbers
    b64 = oai.embeddings.create(model="fake-embed", input=["alpha", "beta"])
    floats = oai.embeddings.create(
        model="fake-embed", input=["alpha", "beta"], encoding_format="float"
    )
    assert [d.embedding for d in b64.data] == [d.embedding for d in floats.data]
    assert len(b64.data) == 2 and len(b64.data[0].embedding) == 8
    assert b64.data[0].embedding != b64.data[1].embedding
    assert all(-1.0 <= v <= 1.0 for v in b64.data[0].embedding)
    assert b64.usage.prompt_tokens == b64.usage.total_tokens == prompt("alpha", "beta") == 10
    assert len(oai.embeddings.create(model="e", input="x", dimensions=3).data[0].embedding) == 3

    models = oai.models.list()
    assert [m.id for m in models.data] == ["fake-gpt", "fake-claude", "fake-gemini"]
    assert all(m.object == "model" and m.owned_by for m in models.data)


# ---------------------------------------------------------------------------- Anthropic


def test_anthropic_message(claude: anthropic.Anthropic, fake: FakeUpstream) -> None:
    r = claude.messages.create(
        model="fake-claude",
        max_tokens=64,
        system="be kind",
        messages=[{"role": "user", "content": [{"type": "text", "text": "hello claude"}]}],
    )
    assert r.id.startswith("msg_") and r.type == "message" and r.role == "assistant"
    assert r.content[0].type == "text" and r.content[0].text == "echo: hello claude"
    assert r.stop_reason == "end_turn" and r.stop_sequence is None
    assert r.usage.input_tokens == prompt("be kind", "hello claude") == 13
    assert r.usage.output_tokens == completion("echo: hello claude") == 6
    assert r.usage.cache_read_input_tokens == 2
    assert r.usage.cache_creation_input_tokens == 4
    logged = fake.requests()[-1]
    assert logged["path"] == "/v1/messages" and "anthropic-version" in logged["headers"]

    count = claude.messages.count_tokens(
        model="fake-claude",
        system="be kind",
        messages=[{"role": "user", "content": "hello claude"}],
    )
    assert count.input_tokens == 13


def test_anthropic_stream_text(claude: anthropic.Anthropic) -> None:
    with claude.messages.stream(
        model="fake-claude", max_tokens=64, messages=[{"role": "user", "content": "a b c"}]
    ) as stream:
        kinds = [e.type for e in stream]
        final = stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "message_delta" in kinds  # (the SDK drops ping events)
    assert final.content[0].type == "text" and final.content[0].text == "echo: a b c"
    assert final.usage.input_tokens == prompt("a b c") == 8
    assert final.usage.output_tokens == completion("echo: a b c") == 7  # from message_delta
    assert final.usage.cache_read_input_tokens == 2


def test_anthropic_stream_thinking_and_tool_use(claude: anthropic.Anthropic) -> None:
    tools: Any = [{"name": "search", "input_schema": {"type": "object"}}]
    messages: list[Any] = [{"role": "user", "content": "look this up"}]
    with claude.messages.stream(
        model="fake-claude",
        max_tokens=2048,
        thinking={"type": "enabled", "budget_tokens": 1024},
        tools=tools,
        messages=messages,
    ) as stream:
        deltas = [e.delta.type for e in stream if e.type == "content_block_delta"]
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["thinking", "tool_use"]
    thinking, tool_use = final.content
    assert thinking.type == "thinking" and thinking.thinking and thinking.signature
    assert tool_use.type == "tool_use" and tool_use.name == "search"
    assert tool_use.id.startswith("toolu_") and tool_use.input == {"text": "look this up"}
    assert final.stop_reason == "tool_use"
    assert deltas.count("input_json_delta") == 3 and "signature_delta" in deltas

    messages += [
        {"role": "assistant", "content": [tool_use.model_dump()]},
        {
            "role": "user",
            "content": [{"type": "tool_result", "tool_use_id": tool_use.id, "content": "42"}],
        },
    ]
    r = claude.messages.create(model="fake-claude", max_tokens=64, tools=tools, messages=messages)
    assert r.stop_reason == "end_turn" and r.content[0].type == "text"
    assert r.usage.input_tokens == prompt("look this up", "42")


# ------------------------------------------------------------------------------- Gemini


def test_gemini(fake: FakeUpstream) -> None:
    body = {
        "systemInstruction": {"parts": [{"text": "short"}]},
        "contents": [{"role": "user", "parts": [{"text": "bonjour gemini"}]}],
    }
    base = f"{fake.url}/v1beta/models/fake-gemini"
    r = httpx.post(f"{base}:generateContent", json=body, headers={"x-goog-api-key": KEY})
    assert r.status_code == 200
    data = r.json()
    candidate = data["candidates"][0]
    assert candidate["content"]["parts"] == [{"text": "echo: bonjour gemini"}]
    assert candidate["finishReason"] == "STOP"
    usage = data["usageMetadata"]
    assert usage["promptTokenCount"] == prompt("short", "bonjour gemini") == 13
    assert usage["candidatesTokenCount"] == completion("echo: bonjour gemini") == 6
    assert usage["totalTokenCount"] == 13 + 6 + 1  # thoughts count in the total
    assert usage["cachedContentTokenCount"] == 2 and usage["thoughtsTokenCount"] == 1

    with httpx.stream(
        "POST", f"{base}:streamGenerateContent", params={"alt": "sse"}, json=body
    ) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(x[5:]) for x in r.iter_lines() if x.startswith("data:")]
    text = "".join(e["candidates"][0]["content"]["parts"][0]["text"] for e in events)
    assert text == "echo: bonjour gemini"
    assert [("usageMetadata" in e) for e in events] == [False, False, True]
    assert events[-1]["usageMetadata"] == usage

    r = httpx.post(f"{base}:countTokens", json=body)
    assert r.json() == {"totalTokens": 13}


def test_gemini_call_of_any_declaration(tmp_path: Path) -> None:
    # the Gemini CLI offers all its tools as the functionDeclarations of one tool
    decls = [{"name": n, "parameters": {"type": "object"}} for n in ("read_file", "write_file")]
    body = {
        "contents": [{"role": "user", "parts": [{"text": "write it"}]}],
        "tools": [{"functionDeclarations": decls}],
    }
    env = {"FAKE_LLM_TOOL": "write_file", "FAKE_LLM_TOOL_ARGS": '{"file_path": "a.txt"}'}
    with start_fake_upstream(tmp_path, env=env) as fake:
        url = f"{fake.url}/v1beta/models/fake-gemini:generateContent"
        r = httpx.post(url, json=body, timeout=10)
    (part,) = r.json()["candidates"][0]["content"]["parts"]
    assert part == {"functionCall": {"name": "write_file", "args": {"file_path": "a.txt"}}}


# -------------------------------------------------------------------------------- knobs


def test_status_knob_uses_each_dialect_error_shape(
    oai: openai.OpenAI, claude: anthropic.Anthropic, fake: FakeUpstream
) -> None:
    with pytest.raises(openai.RateLimitError) as oerr:
        oai.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-fake-status": "429"},
        )
    error = oerr.value.body
    assert isinstance(error, dict) and set(error) == {"message", "type", "param", "code"}
    with pytest.raises(anthropic.InternalServerError) as aerr:
        claude.messages.create(
            model="m",
            max_tokens=8,
            messages=[{"role": "user", "content": "x"}],
            extra_headers={"x-fake-status": "500"},
        )
    assert aerr.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "fake status 500"},
        "request_id": aerr.value.body["request_id"],  # type: ignore[index]
    }
    r = httpx.post(
        f"{fake.url}/v1beta/models/g:generateContent", json={}, headers={"x-fake-status": "503"}
    )
    assert r.status_code == 503 and r.json()["error"]["status"] == "UNAVAILABLE"
    r = httpx.get(f"{fake.url}/v2/nothing")
    assert r.status_code == 404 and r.json()["error"]["type"] == "invalid_request_error"


def test_delay_and_cut_knobs(oai: openai.OpenAI) -> None:
    messages: Any = [{"role": "user", "content": "one two three four"}]
    t0 = time.monotonic()
    oai.chat.completions.create(
        model="m", messages=messages, extra_headers={"x-fake-delay-ms": "200"}
    )
    assert time.monotonic() - t0 >= 0.2

    t0 = time.monotonic()
    chunks = list(
        oai.chat.completions.create(
            model="m", messages=messages, stream=True, extra_headers={"x-fake-chunk-delay-ms": "30"}
        )
    )
    assert len(chunks) == 7 and time.monotonic() - t0 >= 0.18  # 7 chunks + [DONE]: 7 gaps

    received: list[Any] = []
    with pytest.raises((httpx.HTTPError, openai.APIError)):
        stream = oai.chat.completions.create(
            model="m", messages=messages, stream=True, extra_headers={"x-fake-cut-after": "2"}
        )
        received.extend(stream)
    assert len(received) == 2  # role chunk, first word: then the connection dropped


def test_fail_first_and_require_key(tmp_path: Path) -> None:
    env = {"FAKE_LLM_FAIL_FIRST": "2"}
    with start_fake_upstream(tmp_path, "--require-key", KEY, env=env) as fake:
        url = f"{fake.url}/v1/chat/completions"
        body: Any = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        # the key is checked first, and a refused request still counts
        r = httpx.post(url, json=body, headers={"authorization": "Bearer wrong"})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        r = httpx.post(url, json=body, headers={"x-api-key": KEY})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        r = httpx.post(url, json=body, headers={"x-api-key": KEY})
        assert r.status_code == 200

        # the SDK's own retries get through once the failures are used up
        fake.reset()
        with openai.OpenAI(base_url=f"{fake.url}/v1", api_key=KEY, max_retries=2) as client:
            client.chat.completions.create(**body)
        assert [r["path"] for r in fake.requests()].count("/v1/chat/completions") == 3 + 3

        with (
            anthropic.Anthropic(base_url=fake.url, api_key="bad", max_retries=0) as bad,
            pytest.raises(anthropic.AuthenticationError) as err,
        ):
            bad.messages.create(model="m", max_tokens=8, messages=body["messages"])
        assert err.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]

        gemini = f"{fake.url}/v1beta/models/g:generateContent"
        bearer = {"authorization": f"Bearer {KEY}"}  # not how Gemini takes its key
        assert httpx.post(gemini, json={}, headers=bearer).status_code == 401
        assert httpx.post(gemini, json={}, params={"key": KEY}).status_code == 200
        assert fake.configure(require_key="")["require_key"] == ""
        assert httpx.post(gemini, json={}).status_code == 200


def test_runs_as_module(tmp_path: Path) -> None:
    log = tmp_path / "log.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.fakes.llm_upstream", "--port", "0", "--log", str(log)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode()  # bounded by the pytest timeout
        assert line.startswith("LISTENING ")
        r = httpx.get(f"http://127.0.0.1:{line.split()[1]}/health")
        assert r.text == "ok"
        assert json.loads(log.read_text())["path"] == "/health"
    finally:
        proc.terminate()
        proc.communicate(timeout=10)
