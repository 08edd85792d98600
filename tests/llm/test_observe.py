"""agw.llm.observe: the output estimate for answers whose usage never came, and usage read by
the same per-wire parser translation uses (pure, called directly; tests/llm/test_llm_limits.py
and test_llm_translated.py leave real answers through agwd)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agw.llm import translate
from agw.llm.observe import Observer, estimate_output_tokens
from agw.sse import frame


def sse(*events: tuple[str | None, dict[str, Any]]) -> bytes:
    return b"".join(frame(data, name) for name, data in events)


TEXT = "x" * 40  # 10 tokens at characters/4


def test_chat_stream_counts_text_reasoning_and_tool_arguments() -> None:
    raw = (
        sse(
            (None, {"choices": [{"delta": {"content": TEXT[:20]}}]}),
            (None, {"choices": [{"delta": {"reasoning_content": TEXT[:10]}}]}),
            (
                None,
                {
                    "choices": [
                        {"delta": {"tool_calls": [{"function": {"arguments": "abcdefghij"}}]}}
                    ]
                },
            ),
        )
        + b"data: [DONE]\n\n"
    )
    assert estimate_output_tokens([raw], len(raw), stream=True) == 10


def test_messages_stream() -> None:
    raw = sse(
        ("message_start", {"type": "message_start", "message": {"content": []}}),
        ("content_block_delta", {"type": "content_block_delta", "delta": {"text": TEXT[:30]}}),
        ("content_block_delta", {"delta": {"type": "input_json_delta", "partial_json": "abcd"}}),
        ("content_block_delta", {"delta": {"type": "thinking_delta", "thinking": "abcdef"}}),
    )
    assert estimate_output_tokens([raw], len(raw), stream=True) == 10


def test_responses_stream_counts_deltas_not_the_done_copies() -> None:
    raw = sse(
        ("response.output_text.delta", {"type": "response.output_text.delta", "delta": TEXT}),
        ("response.output_text.done", {"type": "response.output_text.done", "text": TEXT}),
        (
            "response.output_item.done",
            {"type": "response.output_item.done", "item": {"content": [{"text": TEXT}]}},
        ),
    )
    assert estimate_output_tokens([raw], len(raw), stream=True) == 10


def test_gemini_stream_and_json_answers() -> None:
    chunk = {"candidates": [{"content": {"parts": [{"text": TEXT}]}}]}
    raw = sse((None, chunk))
    assert estimate_output_tokens([raw], len(raw), stream=True) == 10
    body = json.dumps({"choices": [{"message": {"content": TEXT}}]}).encode()
    assert estimate_output_tokens([body], len(body), stream=False) == 10
    answer = json.dumps({"content": [{"type": "text", "text": TEXT}]}).encode()
    assert estimate_output_tokens([answer], len(answer), stream=False) == 10


def test_what_was_sent_beyond_the_kept_pieces_is_extrapolated() -> None:
    raw = sse((None, {"choices": [{"delta": {"content": TEXT}}]}))
    assert estimate_output_tokens([raw], 3 * len(raw), stream=True) == 30
    assert estimate_output_tokens([], 0, stream=True) == 0
    assert estimate_output_tokens([b"not json"], 8, stream=False) == 0
    assert estimate_output_tokens([b"data: {\n\n"], 9, stream=True) == 0


# --- one usage parser per wire: the passthrough observer reads what translation reads -------

DEEPSEEK_USAGE = {
    "prompt_tokens": 40,
    "completion_tokens": 5,
    "total_tokens": 45,
    "prompt_cache_hit_tokens": 32,
    "prompt_cache_miss_tokens": 8,
}
ANSWERS: dict[str, dict[str, Any]] = {
    "chat": {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
        "usage": DEEPSEEK_USAGE,
    },
    "messages": {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": "hi"}],
        "usage": {
            "input_tokens": 3,
            "output_tokens": 5,
            "cache_read_input_tokens": 30,
            "cache_creation_input_tokens": 7,
        },
    },
    "responses": {
        "output": [],
        "usage": {
            "input_tokens": 40,
            "output_tokens": 5,
            "input_tokens_details": {"cached_tokens": 32, "cache_write_tokens": 4},
            "output_tokens_details": {"reasoning_tokens": 2},
        },
    },
    "gemini": {
        "candidates": [{"content": {"parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
        "usageMetadata": {
            "promptTokenCount": 40,
            "toolUsePromptTokenCount": 6,
            "candidatesTokenCount": 3,
            "thoughtsTokenCount": 2,
            "cachedContentTokenCount": 32,
        },
    },
}


@pytest.mark.parametrize("wire", sorted(ANSWERS))
def test_passthrough_and_translation_read_usage_alike(wire: str) -> None:
    answer = ANSWERS[wire]
    observer = Observer(wire)
    observer.body(json.dumps(answer).encode())
    translated = translate.parse_response(answer, wire).usage
    assert observer.usage_seen and translated is not None
    assert observer.usage == translated
    assert observer.usage.cached_input_tokens > 0


def test_deepseek_cache_hits_in_a_chat_stream() -> None:
    chunks = [
        {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]},
        {"choices": [], "usage": DEEPSEEK_USAGE},
    ]
    observer = Observer("chat")
    translator = translate.StreamTranslator("chat", "messages")
    for chunk in chunks:
        data = json.dumps(chunk)
        observer.event("", data)
        translator.feed(None, data)
    observer.event("", "[DONE]")
    translator.feed(None, "[DONE]")
    assert observer.finished and observer.usage_only_chunk is False
    assert observer.usage == translator.usage
    assert (observer.usage.input_tokens, observer.usage.cached_input_tokens) == (40, 32)


def test_a_messages_stream_keeps_what_a_delta_reports_as_zero() -> None:
    start = {"message": {"usage": {"input_tokens": 3, "cache_read_input_tokens": 30}}}
    delta = {"usage": {"input_tokens": 0, "cache_read_input_tokens": 0, "output_tokens": 9}}
    observer = Observer("messages")
    translator = translate.StreamTranslator("messages", "chat")
    for name, data in (("message_start", start), ("message_delta", delta)):
        observer.event(name, json.dumps({"type": name, **data}))
        translator.feed(name, json.dumps({"type": name, **data}))
    assert (observer.usage.input_tokens, observer.usage.cached_input_tokens) == (33, 30)
    assert observer.usage.output_tokens == 9
    assert observer.usage == translator.usage
