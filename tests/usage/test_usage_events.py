"""The event values: defaults, conversion to SQL values, payload truncation, bounds."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import pytest

from agw.usage.events import (
    INT64_MAX,
    INT64_MIN,
    NAME_LIMIT,
    NAMES_LIMIT,
    PAYLOAD_LIMIT_BYTES,
    TEXT_LIMIT,
    TEXT_LIMITS,
    AcpUsageEvent,
    LlmUsageEvent,
    McpUsageEvent,
    UsageEvent,
    new_event_id,
)
from tests.support.usage import NOW_MS


def values_of(event: UsageEvent) -> dict[str, Any]:
    """The event's row by column name."""
    return dict(zip(event.columns(), event.row(), strict=True))


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
    values = values_of(event)
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
    values = values_of(event)
    assert values["success"] == 1
    assert values["fresh_session"] == 0
    assert json.loads(values["event_counts_json"]) == {"agent_message_chunk": 3, "done": 1}
    assert json.loads(values["usage_json"]) == {"input_tokens": 5}
    unknown = AcpUsageEvent(started_at=1, finished_at=2)
    assert values_of(unknown)["fresh_session"] is None

    llm = LlmUsageEvent(started_at=1, finished_at=2, tool_names=["get_weather", "search"])
    llm_values = values_of(llm)
    assert json.loads(llm_values["tool_names"]) == ["get_weather", "search"]


def test_free_form_payloads_are_cut_to_the_limit() -> None:
    args: dict[str, object] = {"text": "é" * 5000, "n": 1}
    event = McpUsageEvent(started_at=1, finished_at=2, tool_args_json=args)
    stored = values_of(event)["tool_args_json"]
    assert isinstance(stored, str)
    assert len(stored.encode()) == PAYLOAD_LIMIT_BYTES
    assert stored.startswith('{"text":"\\u00e9')
    small = McpUsageEvent(started_at=1, finished_at=2, tool_args_json={"city": "Zürich"})
    small_stored = values_of(small)["tool_args_json"]
    assert json.loads(small_stored) == {"city": "Zürich"}


def test_payload_values_json_cannot_encode_are_written_as_text() -> None:
    event = McpUsageEvent(started_at=1, finished_at=2, tool_args_json={"raw": b"\x00"})
    stored = values_of(event)["tool_args_json"]
    assert json.loads(stored) == {"raw": "b'\\x00'"}


def test_bound_clamps_every_integer_to_64_bits() -> None:
    event = LlmUsageEvent(
        started_at=NOW_MS,
        finished_at=NOW_MS,
        agent_depth=10**30,  # X-Agent-Depth
        input_tokens=-(10**40),  # an upstream's usage
        output_tokens=float("nan"),  # type: ignore[arg-type]
        total_tokens=12.9,  # type: ignore[arg-type]
        reasoning_tokens=True,
    )
    event.bound()
    assert (event.agent_depth, event.input_tokens) == (INT64_MAX, INT64_MIN)
    assert (event.output_tokens, event.total_tokens, event.reasoning_tokens) == (0, 12, 1)
    assert all(type(v) is int for v in (event.output_tokens, event.total_tokens))


def test_bound_cuts_text_to_its_limit_and_replaces_lone_surrogates() -> None:
    event = McpUsageEvent(
        started_at=NOW_MS,
        finished_at=NOW_MS,
        request_id="7" * 3_900_000,  # issue 12: a 3.9 MB JSON-RPC id was stored per row
        mcp_session_id="s" * 5000,
        tool_name="t\ud800" * 1000,
        http_path="/p" * 5000,
        http_method="GET",
        route_id="r" * 2000,
    )
    event.bound()
    assert event.request_id == "7" * TEXT_LIMITS["request_id"]
    assert event.mcp_session_id == "s" * 200
    assert event.tool_name == ("t?" * 1000)[:TEXT_LIMIT]
    assert event.http_path is not None and len(event.http_path) == TEXT_LIMITS["http_path"]
    assert event.http_method == "GET"
    assert event.route_id == "r" * TEXT_LIMITS["route_id"]
    event.row()[0]  # encodes


class _Name(str):
    """A str subclass: stored as the plain text it holds."""


@pytest.mark.parametrize(
    ("field", "given", "kept"),
    [
        ("input_tokens", INT64_MAX, INT64_MAX),
        ("input_tokens", INT64_MIN, INT64_MIN),
        ("input_tokens", INT64_MAX + 1, INT64_MAX),
        ("input_tokens", INT64_MIN - 1, INT64_MIN),
        ("input_tokens", True, 1),
        ("input_tokens", 0, 0),
        ("http_path", "/p" * 1024, "/p" * 1024),  # its own limit, past the shortest
        ("http_path", "/p" * 1025, "/p" * 1024),
        ("upstream_model", "m" * TEXT_LIMIT, "m" * TEXT_LIMIT),
        ("upstream_model", "m" * (TEXT_LIMIT + 1), "m" * TEXT_LIMIT),
        ("upstream_model", "Zürich-1", "Zürich-1"),  # not ASCII, but UTF-8 encodes it
        ("upstream_model", "z\ud800", "z?"),
        ("upstream_model", _Name("named"), "named"),
        ("upstream_model", 5, "5"),
        ("upstream_model", "", ""),
        ("upstream_model", 0, "0"),  # not text, though falsy
        ("upstream_model", b"", "b''"),
        ("upstream_model", [], "[]"),
    ],
)
def test_bound_checks_each_value_of_a_family_the_others_pass(
    field: str, given: object, kept: object
) -> None:
    """One value out of bounds among values that are not: the family-at-once check sends it
    through the value-by-value one, which keeps what fits and mends what does not."""
    event = LlmUsageEvent(
        started_at=NOW_MS,
        finished_at=NOW_MS,
        output_tokens=7,
        provider_id="oa",
        session_id="s" * 200,
        **{field: given},  # type: ignore[arg-type]
    )
    event.bound()
    value = getattr(event, field)
    assert value == kept and type(value) is type(kept)
    assert (event.output_tokens, event.provider_id, event.session_id) == (7, "oa", "s" * 200)


def test_bound_keeps_name_lists_within_their_budget() -> None:
    many = [f"tool-{i}-" + "x" * 300 for i in range(500)]
    event = LlmUsageEvent(
        started_at=NOW_MS,
        finished_at=NOW_MS,
        request_tool_count=500,
        request_tool_names=many,
        tool_names=["ok", "fine", "t\udc80"],
    )
    event.bound()
    assert event.request_tool_names == [n[:NAME_LIMIT] for n in many[: NAMES_LIMIT // NAME_LIMIT]]
    assert event.tool_names == ["ok", "fine", "t?"]
    assert event.request_tool_count == 500


def test_bound_leaves_values_in_bounds_alone() -> None:
    names = [f"n{i}" for i in range(200)]  # more names than the fast check admits, all short
    event = LlmUsageEvent(
        started_at=NOW_MS,
        finished_at=NOW_MS + 5,
        agent_depth=INT64_MAX,
        upstream_model="é" * TEXT_LIMIT,
        request_tool_names=names,
    )
    before = event.row()
    event.bound()
    assert event.row() == before
