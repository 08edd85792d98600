"""agw.llm.observe's output estimate for answers whose usage never came (pure, called directly;
tests/llm/test_llm_limits.py leaves real streams through agwd)."""

from __future__ import annotations

import json
from typing import Any

from agw.llm.observe import estimate_output_tokens
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
