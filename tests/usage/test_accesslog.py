"""The access log's time field: the gateway's one RFC 3339 format (agw/clock.py), formatted
faster per request."""

from __future__ import annotations

from agw.clock import rfc3339_ms
from agw.usage.accesslog import _time


def test_the_time_field_is_the_clock_format() -> None:
    second = 1_796_567_305_000
    for ms in (0, 999, 1_000, second, second + 1, second + 999, second + 1_000, 4_102_444_800_123):
        assert _time(ms) == rfc3339_ms(ms), ms
