"""Retention: exactly the rows older than the cutoff go, from all three tables."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agw.clock import now_ms
from agw.store.db import Database
from agw.usage.events import AcpUsageEvent, LlmUsageEvent, McpUsageEvent, UsageEvent
from agw.usage.recorder import UsageRecorder
from agw.usage.retention import RetentionJanitor, purge_older_than
from tests.support.usage import DAY_MS, NOW_MS, count, rows, wait_until

KINDS: tuple[type[UsageEvent], ...] = (LlmUsageEvent, McpUsageEvent, AcpUsageEvent)


async def write(db: Database, events: list[UsageEvent]) -> None:
    recorder = UsageRecorder(db)
    for event in events:
        assert recorder.emit(event)
    await recorder.close()
    assert recorder.written_events == len(events)


def aged(now: int) -> list[UsageEvent]:
    """Per table: 40 days old, 1 ms past 30 days, exactly 30 days, and fresh."""
    ages = {"d40": 40 * DAY_MS, "d30+1": 30 * DAY_MS + 1, "d30": 30 * DAY_MS, "new": 0}
    return [
        cls(event_id=f"{cls.table}:{name}", started_at=now - age, finished_at=now - age + 5)
        for cls in KINDS
        for name, age in ages.items()
    ]


def test_purge_deletes_exactly_the_rows_before_the_cutoff(tmp_path: Path) -> None:
    path = tmp_path / "c.db"

    async def main() -> tuple[int, int]:
        db = await Database.open(path)
        await write(db, aged(NOW_MS))
        deleted = await purge_older_than(db, 30, now_ms=NOW_MS)
        again = await purge_older_than(db, 30, now_ms=NOW_MS)
        await db.close()
        return deleted, again

    assert asyncio.run(main()) == (6, 0)
    for cls in KINDS:
        kept = [r["event_id"] for r in rows(path, cls.table, order_by="event_id")]
        assert kept == [f"{cls.table}:d30", f"{cls.table}:new"]


def test_purge_defaults_to_the_current_time(tmp_path: Path) -> None:
    path = tmp_path / "c.db"

    async def main() -> int:
        db = await Database.open(path)
        await write(db, aged(now_ms() - 60_000))  # a minute ago: the "d30" rows are now old
        deleted = await purge_older_than(db, 30)
        await db.close()
        return deleted

    assert asyncio.run(main()) == 9
    assert [count(path, cls.table) for cls in KINDS] == [1, 1, 1]


def test_negative_days_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        db = await Database.open(tmp_path / "c.db")
        try:
            with pytest.raises(ValueError):
                await purge_older_than(db, -1)
            with pytest.raises(ValueError):
                RetentionJanitor(db, -1)
        finally:
            await db.close()

    asyncio.run(main())


def test_the_janitor_purges_at_start_and_then_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "c.db"

    async def main() -> RetentionJanitor:
        db = await Database.open(path)
        now = now_ms()
        await write(db, [LlmUsageEvent(started_at=now - 31 * DAY_MS, finished_at=now)])
        await write(db, [McpUsageEvent(started_at=now, finished_at=now)])
        janitor = RetentionJanitor(db, 0, interval_s=0.05)  # 0 days: the default 30
        assert janitor.days == 30
        janitor.start()
        await wait_until(lambda: janitor.runs >= 1)
        assert janitor.purged_rows == 1
        assert count(path, "llm_usage_events") == 0
        await write(db, [AcpUsageEvent(started_at=now - 90 * DAY_MS, finished_at=now)])
        await wait_until(lambda: janitor.purged_rows == 2)
        await janitor.close()
        await db.close()
        return janitor

    janitor = asyncio.run(main())
    assert janitor.runs >= 2
    assert [count(path, cls.table) for cls in KINDS] == [0, 1, 0]
