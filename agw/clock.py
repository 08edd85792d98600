"""Time, in the gateway's two units: unix milliseconds (every stored timestamp) and RFC 3339
text with milliseconds and a ``Z`` (every timestamp in a JSON answer)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta


def now_ms() -> int:
    """Wall-clock time in unix milliseconds."""
    return time.time_ns() // 1_000_000


def rfc3339(moment: datetime | float | None = None) -> str:
    """``2026-12-06T15:04:05.123Z``: a datetime (naive means UTC), unix seconds, or now."""
    if moment is None:
        moment = datetime.now(UTC)
    elif not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    else:
        moment = moment.astimezone(UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_ms(ms: int) -> str:
    """RFC 3339 text of unix milliseconds (any value a 64-bit column holds that a datetime can)."""
    return rfc3339(_EPOCH + timedelta(milliseconds=ms))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
