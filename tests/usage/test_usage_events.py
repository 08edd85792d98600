"""The event values: defaults, conversion to SQL values, payload truncation."""

from __future__ import annotations

import json
import time
import uuid

import pytest
from usage_support import NOW_MS

from agw.usage.events import (
    PAYLOAD_LIMIT_BYTES,
    AcpUsageEvent,
    LlmUsageEvent,
    McpUsageEvent,
    UsageEvent,
    new_event_id,
)


def test_new_event_id_is_a_fresh_time_ordered_uuid7() -> None:
    before_ms = time.time_ns() // 1_000_000
    first, second = new_event_id(), new_event_id()
    assert first != second
    parsed = uuid.UUID(first)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert str(parsed) == first
    stamp_ms = parsed.int >> 80
    assert before_ms <= stamp_ms <= time.time_ns() // 1_000_000
    time.sleep(0.002)
    assert new_event_id() > first  # later milliseconds sort later


def test_an_event_needs_only_its_times() -> None:
    event = LlmUsageEvent(started_at=NOW_MS, finished_at=NOW_MS + 250)
    values = dict(zip(event.columns(), event.row(), strict=True))
    assert uuid.UUID(values["event_id"]).version == 7
    assert len(values["span_id"]) == 16
    assert values["route_kind"] == "llm"
    assert values["latency_ms"] == 250
    assert (values["success"], values["stream"], values["usage_finalized"]) == (0, 0, 1)
    assert values["request_tool_names"] is None
    assert values["tool_names"] is None
    assert values["agent_id"] is None
    assert McpUsageEvent(started_at=1, finished_at=1).route_kind == "mcp"
    assert AcpUsageEvent(started_at=1, finished_at=1).route_kind == "acp"


def test_explicit_latency_is_kept() -> None:
    assert LlmUsageEvent(started_at=10, finished_at=20, latency_ms=3).latency_ms == 3


def test_events_are_slotted() -> None:
    event = McpUsageEvent(started_at=1, finished_at=2)
    assert not hasattr(event, "__dict__")
    with pytest.raises(AttributeError):
        event.no_such_column = 1  # type: ignore[attr-defined]


def test_the_common_base_cannot_be_built() -> None:
    with pytest.raises(TypeError):
        UsageEvent(started_at=1, finished_at=2)


def test_row_encodes_booleans_lists_and_payloads() -> None:
    event = AcpUsageEvent(
        started_at=1,
        finished_at=2,
        success=True,
        fresh_session=False,
        event_counts_json={"agent_message_chunk": 3, "done": 1},
        usage_json={"input_tokens": 5},
    )
    values = dict(zip(event.columns(), event.row(), strict=True))
    assert values["success"] == 1
    assert values["fresh_session"] == 0
    assert json.loads(values["event_counts_json"]) == {"agent_message_chunk": 3, "done": 1}
    assert json.loads(values["usage_json"]) == {"input_tokens": 5}
    unknown = AcpUsageEvent(started_at=1, finished_at=2)
    assert dict(zip(unknown.columns(), unknown.row(), strict=True))["fresh_session"] is None

    llm = LlmUsageEvent(started_at=1, finished_at=2, tool_names=["get_weather", "search"])
    llm_values = dict(zip(llm.columns(), llm.row(), strict=True))
    assert json.loads(llm_values["tool_names"]) == ["get_weather", "search"]


def test_free_form_payloads_are_cut_to_the_limit() -> None:
    args: dict[str, object] = {"text": "é" * 5000, "n": 1}
    event = McpUsageEvent(started_at=1, finished_at=2, tool_args_json=args)
    stored = dict(zip(event.columns(), event.row(), strict=True))["tool_args_json"]
    assert isinstance(stored, str)
    assert len(stored.encode()) == PAYLOAD_LIMIT_BYTES
    assert stored.startswith('{"text":"\\u00e9')
    small = McpUsageEvent(started_at=1, finished_at=2, tool_args_json={"city": "Zürich"})
    small_stored = dict(zip(small.columns(), small.row(), strict=True))["tool_args_json"]
    assert json.loads(small_stored) == {"city": "Zürich"}


def test_payload_values_json_cannot_encode_are_written_as_text() -> None:
    event = McpUsageEvent(started_at=1, finished_at=2, tool_args_json={"raw": b"\x00"})
    stored = dict(zip(event.columns(), event.row(), strict=True))["tool_args_json"]
    assert json.loads(stored) == {"raw": "b'\\x00'"}
