"""The hot-path identifiers: unique, well-formed, time-ordered where a database indexes them."""

from __future__ import annotations

import time
import uuid

from agw.ids import new_event_id, new_span_id, new_trace_id

HEX = set("0123456789abcdef")


def test_event_ids_are_time_ordered_uuid7() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:50]:
        parsed = uuid.UUID(text)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
        assert before_ms <= parsed.int >> 80 <= time.time_ns() // 1_000_000


def test_trace_ids_are_w3c_and_start_with_the_time() -> None:
    before_ms = time.time_ns() // 1_000_000
    ids = [new_trace_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        assert len(text) == 32 and set(text) <= HEX and text != "0" * 32
        assert before_ms <= int(text[:12], 16) <= time.time_ns() // 1_000_000
    time.sleep(0.002)
    assert new_trace_id() > ids[-1]


def test_span_ids_are_w3c() -> None:
    ids = [new_span_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    assert all(len(s) == 16 and set(s) <= HEX and s != "0" * 16 for s in ids)
