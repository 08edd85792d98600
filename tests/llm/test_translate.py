"""Golden files for every format pair, and round trips through the canonical model.

``tests/golden/<src>_to_<dst>/<case>/`` holds ``input.json`` (``request_*``, ``response_*``
cases) or ``input.sse`` (``stream_*``), an optional ``options.json`` (``model``, ``stream``,
``include_usage``) and the expected output: ``expected.json`` / ``expected.sse``, plus
``dropped.json`` for requests and ``usage.json`` for streams. Ids and clocks come from a
seeded ``Ids`` so outputs are reproducible. ``AGW_UPDATE_GOLDEN=1`` rewrites the expected
files: read every changed one against the wire specs before keeping it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from agw.llm.translate import (
    Ids,
    StreamTranslator,
    parse_request,
    render_request,
    tool_namespaces,
    translate_request,
    translate_response,
)
from agw.llm.translate.canonical import Image, Text, Thinking, ToolCall, ToolResult
from tests.support import sse

GOLDEN = Path(__file__).resolve().parent.parent / "golden"
UPDATE = os.environ.get("AGW_UPDATE_GOLDEN") == "1"
NOW = 1_700_000_000


def _cases() -> list[Path]:
    return sorted(p for p in GOLDEN.glob("*_to_*/*") if p.is_dir())


def _ids() -> Ids:
    return Ids(seed=1, now=NOW)


def _options(case: Path) -> dict[str, Any]:
    path = case / "options.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _check_json(path: Path, actual: Any) -> None:
    text = json.dumps(actual, indent=2, ensure_ascii=False) + "\n"
    if UPDATE:
        path.write_text(text)
        return
    assert path.exists(), f"{path} is missing; run with AGW_UPDATE_GOLDEN=1 and review it"
    assert actual == json.loads(path.read_text())


def _check_text(path: Path, actual: str) -> None:
    if UPDATE:
        path.write_text(actual)
        return
    assert path.exists(), f"{path} is missing; run with AGW_UPDATE_GOLDEN=1 and review it"
    assert actual == path.read_text()


def run_case(case: Path) -> None:
    src, dst = case.parent.name.split("_to_")
    opts = _options(case)
    kind = case.name.split("_", 1)[0]
    if kind == "request":
        dropped: list[str] = []
        body = json.loads((case / "input.json").read_text())
        out = translate_request(
            body,
            src,
            dst,
            model=opts.get("model"),
            stream=opts.get("stream"),
            ids=_ids(),
            dropped=dropped,
        )
        _check_json(case / "expected.json", out)
        _check_json(case / "dropped.json", dropped)
    elif kind == "response":
        body = json.loads((case / "input.json").read_text())
        out = translate_response(body, src, dst, model=opts.get("model"), ids=_ids())
        _check_json(case / "expected.json", out)
    elif kind == "stream":
        translator = StreamTranslator(
            src,
            dst,
            model=opts.get("model"),
            include_usage=opts.get("include_usage", True),
            ids=_ids(),
        )
        chunks = [
            translator.feed(event, data)
            for event, data in sse.parse((case / "input.sse").read_text())
        ]
        chunks.append(translator.finish())
        assert translator.finished
        assert translator.finish() == b""
        _check_text(case / "expected.sse", b"".join(chunks).decode())
        _check_json(case / "usage.json", dataclasses.asdict(translator.usage))
    else:
        raise AssertionError(
            f"{case}: the case name must start with request_, response_ or stream_"
        )


@pytest.mark.parametrize("case", _cases(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_golden(case: Path) -> None:
    run_case(case)


def test_every_pair_has_the_core_cases() -> None:
    pairs = {p.name for p in GOLDEN.iterdir() if p.is_dir()}
    for src in ("chat", "messages", "responses"):
        for dst in ("chat", "messages", "responses"):
            if src != dst:
                assert f"{src}_to_{dst}" in pairs
    assert {"chat_to_gemini", "messages_to_gemini", "gemini_to_chat", "gemini_to_messages"} <= pairs
    core = {
        "request_plain",
        "request_system_params",
        "request_tools",
        "request_image",
        "response_text",
        "stream_text",
        "stream_tool_call",
        "stream_thinking",
    }
    for pair in pairs:
        have = {p.name for p in (GOLDEN / pair).iterdir()}
        assert core <= have, f"{pair} lacks {sorted(core - have)}"


# --- round trips --------------------------------------------------------------------------

WORDS = ["alpha", "beta", "gamma", "delta", "ünïcode ✓", "line\nbreak", '"quoted"', "{json}"]


def _random_chat(rng: random.Random) -> dict[str, Any]:
    """A random but well-formed chat conversation with tools, calls and results."""
    tools: list[dict[str, Any]] = [
        {
            "type": "function",
            "function": {
                "name": f"tool_{i}",
                "description": rng.choice(WORDS),
                "parameters": {
                    "type": "object",
                    "properties": {"x": {"type": "string"}, "n": {"type": "integer"}},
                    "required": ["x"],
                },
            },
        }
        for i in range(rng.randint(1, 3))
    ]
    messages: list[dict[str, Any]] = []
    if rng.random() < 0.7:
        messages.append({"role": "system", "content": rng.choice(WORDS)})
    call_no = 0
    for _ in range(rng.randint(1, 4)):
        messages.append({"role": "user", "content": " ".join(rng.sample(WORDS, 2))})
        calls = []
        for _ in range(rng.randint(0, 3)):
            call_no += 1
            args = {"x": rng.choice(WORDS), "n": rng.randint(-5, 5)}
            calls.append(
                {
                    "id": f"call_{call_no:04d}",
                    "type": "function",
                    "function": {
                        "name": rng.choice(tools)["function"]["name"],
                        "arguments": json.dumps(args, separators=(",", ":"), ensure_ascii=False),
                    },
                }
            )
        assistant: dict[str, Any] = {"role": "assistant", "content": rng.choice([*WORDS, None])}
        if calls:
            assistant["tool_calls"] = calls
        elif assistant["content"] is None:
            assistant["content"] = "ok"
        messages.append(assistant)
        for call in calls:
            messages.append(
                {"role": "tool", "tool_call_id": call["id"], "content": rng.choice(WORDS)}
            )
    messages.append({"role": "user", "content": rng.choice(WORDS)})
    return {"model": "m", "messages": messages, "tools": tools}


def _conversation(body: dict[str, Any]) -> list[tuple[Any, ...]]:
    """What must survive: every text, call (id, name, arguments object) and result, in order."""
    req = parse_request(body, "chat")
    out: list[tuple[Any, ...]] = [("system", s) for s in req.system]
    for m in req.messages:
        for p in m.content:
            if isinstance(p, Text):
                out.append((m.role, p.text))
            elif isinstance(p, ToolCall):
                out.append(("call", p.id, p.name, p.arguments_object()))
            elif isinstance(p, ToolResult):
                out.append(("result", p.tool_call_id, p.text()))
    return out


@pytest.mark.parametrize("seed", range(200))
def test_chat_messages_chat_round_trip(seed: int) -> None:
    body = _random_chat(random.Random(seed))
    there = translate_request(body, "chat", "messages")
    back = translate_request(there, "messages", "chat")
    assert _conversation(back) == _conversation(body)
    assert back["tools"] == body["tools"]


@pytest.mark.parametrize("via", ["responses", "gemini"])
@pytest.mark.parametrize("seed", range(50))
def test_chat_round_trip_through_other_formats(seed: int, via: str) -> None:
    body = _random_chat(random.Random(seed))
    back = translate_request(translate_request(body, "chat", via), via, "chat")
    assert _conversation(back) == _conversation(body)
    for tool in back["tools"]:  # Responses states strict:false, which chat leaves implicit
        if tool["function"].get("strict") is False:
            del tool["function"]["strict"]
    assert back["tools"] == body["tools"]


def test_anthropic_thinking_survives_a_responses_client() -> None:
    """Claude thinking shown to a Responses client comes back, signed, on the next turn."""
    claude = {
        "id": "msg_01",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [
            {"type": "thinking", "thinking": "plan", "signature": "SIG=="},
            {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
        ],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 2},
    }
    shown = translate_response(claude, "messages", "responses", ids=_ids())
    follow_up = {
        "model": "m",
        "input": [
            {"type": "message", "role": "user", "content": "go"},
            *shown["output"],
            {"type": "function_call_output", "call_id": "toolu_1", "output": "done"},
        ],
    }
    upstream = translate_request(follow_up, "responses", "messages")
    assistant = upstream["messages"][1]["content"]
    assert assistant[0] == {"type": "thinking", "thinking": "plan", "signature": "SIG=="}
    assert assistant[1]["type"] == "tool_use"


def test_render_does_not_invent_history_it_cannot_sign() -> None:
    req = parse_request(
        {
            "model": "m",
            "messages": [
                {"role": "user", "content": "q"},
                {"role": "assistant", "content": "a", "reasoning_content": "because"},
                {"role": "user", "content": "q2"},
            ],
        },
        "chat",
    )
    assert isinstance(req.messages[1].content[0], Thinking)
    body = render_request(req, "messages")
    assert body["messages"][1] == {"role": "assistant", "content": "a"}
    assert any("thinking" in d for d in req.dropped)


def test_image_data_url_split_and_rebuilt() -> None:
    img = Image.from_url("data:image/png;base64,AAAA", "low")
    assert (img.media_type, img.data, img.url, img.detail) == ("image/png", "AAAA", None, "low")
    assert img.as_url() == "data:image/png;base64,AAAA"


# --- behaviours the golden files do not show ----------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    choice = {"index": 0, "delta": delta, "finish_reason": finish}
    return json.dumps({"id": "c1", "model": "m", "created": 1, "choices": [choice], **extra})


def _play(translator: StreamTranslator, events: Sequence[tuple[str | None, str]]) -> str:
    out = b"".join(translator.feed(name, data) for name, data in events)
    return (out + translator.finish()).decode()


def test_tool_calls_with_a_stop_finish_become_tool_use() -> None:
    """Some OpenAI-compatible servers say "stop" next to tool calls; Claude Code needs tool_use."""
    call = {
        "index": 0,
        "id": "call_1",
        "type": "function",
        "function": {"name": "f", "arguments": "{}"},
    }
    out = _play(
        StreamTranslator("chat", "messages", ids=_ids()),
        [(None, _chunk({"tool_calls": [call]})), (None, _chunk({}, "stop")), (None, "[DONE]")],
    )
    assert '"stop_reason": "tool_use"' in out
    body = {
        "choices": [
            {"message": {"role": "assistant", "tool_calls": [call]}, "finish_reason": "stop"}
        ]
    }
    assert translate_response(body, "chat", "messages")["stop_reason"] == "tool_use"


def test_chat_stream_without_done_after_a_finish_ends_normally() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    translator = StreamTranslator("chat", "responses", ids=_ids())
    out = _play(translator, [(None, _chunk({"content": "hi"}, "length", usage=usage))])
    assert "event: response.incomplete" in out
    assert '"incomplete_details": {"reason": "max_output_tokens"}' in out
    assert (translator.usage.input_tokens, translator.usage.output_tokens) == (5, 2)


def test_upstream_error_mid_stream_reaches_the_chat_client() -> None:
    start = {"type": "message_start", "message": {"id": "msg_1", "model": "c", "usage": {}}}
    error = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    out = _play(
        StreamTranslator("messages", "chat", ids=_ids()),
        [("message_start", json.dumps(start)), ("error", json.dumps(error))],
    )
    frames = [data for _, data in sse.parse(out)]
    assert json.loads(frames[-2])["error"] == {
        "message": "Overloaded",
        "type": "overloaded_error",
        "param": None,
        "code": None,
    }
    assert frames[-1] == "[DONE]"


def test_usage_chunk_only_when_asked() -> None:
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    events = [(None, _chunk({"content": "hi"}, "stop", usage=usage)), (None, "[DONE]")]
    with_usage = _play(StreamTranslator("chat", "chat", ids=_ids()), events)
    without = _play(StreamTranslator("chat", "chat", include_usage=False, ids=_ids()), events)
    assert '"choices": [], "usage"' in with_usage
    assert '"usage"' not in without


def test_openrouter_reasoning_deltas_are_thinking() -> None:
    out = _play(
        StreamTranslator("chat", "messages", ids=_ids()),
        [(None, _chunk({"reasoning": "hmm"})), (None, _chunk({}, "stop")), (None, "[DONE]")],
    )
    assert '"thinking_delta", "thinking": "hmm"' in out


def test_foreign_tool_ids_are_made_safe_for_anthropic() -> None:
    body = {
        "model": "m",
        "messages": [
            {"role": "user", "content": "q"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": "functions.f:0",
                        "type": "function",
                        "function": {"name": "f", "arguments": "{}"},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": "functions.f:0", "content": "r"},
        ],
    }
    out = translate_request(body, "chat", "messages")
    assert out["messages"][1]["content"][0]["id"] == "functions_f_0"
    assert out["messages"][2]["content"][0]["tool_use_id"] == "functions_f_0"


def test_thinking_budget_fits_under_max_tokens() -> None:
    body = {
        "model": "m",
        "max_tokens": 3000,
        "reasoning_effort": "high",
        "temperature": 0.3,
        "messages": [{"role": "user", "content": "q"}],
    }
    dropped: list[str] = []
    out = translate_request(body, "chat", "messages", dropped=dropped)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 2999}
    assert "temperature" not in out
    assert any(d.startswith("temperature") for d in dropped)
    small = translate_request({**body, "max_tokens": 500}, "chat", "messages")
    assert "thinking" not in small


def test_gemini_model_and_stream_come_from_the_url() -> None:
    body = {"contents": [{"parts": [{"text": "hi"}]}]}
    out = translate_request(body, "gemini", "chat", model="gemini-2.5-pro", stream=True)
    assert out["model"] == "gemini-2.5-pro"
    assert out["stream"] is True


def test_codex_namespace_tools_round_trip_through_anthropic() -> None:
    request = json.loads((GOLDEN / "responses_to_messages/request_tools/input.json").read_text())
    upstream = translate_request(request, "responses", "messages")
    assert "mcp__gw__echo" in [t["name"] for t in upstream["tools"]]
    start = {"type": "message_start", "message": {"id": "msg_1", "model": "c", "usage": {}}}
    block = {"type": "tool_use", "id": "toolu_1", "name": "mcp__gw__echo", "input": {}}
    events = [
        ("message_start", start),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        (
            "message_delta",
            {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {}},
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    translator = StreamTranslator(
        "messages", "responses", ids=_ids(), tool_namespaces=tool_namespaces(request)
    )
    out = _play(translator, [(name, json.dumps(data)) for name, data in events])
    done = json.loads(sse.parse(out)[-1][1])["response"]["output"][0]
    assert (done["namespace"], done["name"], done["call_id"]) == ("mcp__gw", "echo", "toolu_1")
    answer = {
        "id": "msg_2",
        "content": [block],
        "stop_reason": "tool_use",
        "usage": {"input_tokens": 1, "output_tokens": 1},
    }
    item = translate_response(
        answer, "messages", "responses", tool_namespaces=tool_namespaces(request)
    )["output"][0]
    assert (item["namespace"], item["name"]) == ("mcp__gw", "echo")
