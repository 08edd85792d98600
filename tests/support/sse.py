"""A whole-text SSE reader for golden files and captured streams."""

from __future__ import annotations

from agw.sse import SseParser


def parse(text: str) -> list[tuple[str | None, str]]:
    """Every event of an SSE text as ``(event name or None, data)``."""
    parser = SseParser()
    events = parser.feed(text.encode()) + parser.close()
    return [(None if e.event == "message" else e.event, e.data) for e in events]
