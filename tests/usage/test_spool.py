"""The usage spool (agw/usage/spool.py) against real SQLite and PostgreSQL stores: segments
deleted once written, a dead process's segments replayed exactly once at the next start, one
process per spool directory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from agw.store import usage_repo
from agw.store.engine import Store, open_store
from agw.store.usage_repo import TableRows
from agw.usage.events import LlmUsageEvent, McpUsageEvent, UsageEvent
from agw.usage.recorder import UsageRecorder
from agw.usage.spool import LOCK, UsageSpool
from tests.support.engines import ENGINES, secret_key, store_target
from tests.support.usage import NOW_MS, wait_until


@pytest.fixture(params=ENGINES)
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | Path]:
    with store_target(request.param, tmp_path) as t:
        yield t


def llm(n: int) -> LlmUsageEvent:
    return LlmUsageEvent(
        event_id=f"llm-{n}",
        started_at=NOW_MS + n,
        finished_at=NOW_MS + n + 10,
        route_id="chat",
        success=True,
        input_tokens=n,
        request_tool_names=["get_weather", "search"],
    )


def mcp(n: int) -> McpUsageEvent:
    return McpUsageEvent(
        event_id=f"mcp-{n}",
        started_at=NOW_MS + n,
        finished_at=NOW_MS + n + 5,
        tool_name="echo",
        tool_args_json={"text": "héllo", "n": n},
    )


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name != LOCK)


async def stored(db: Store, table: str) -> dict[str, tuple[object, ...]]:
    async with (await db.reader()).execute(
        f"SELECT event_id, input_tokens, request_tool_names FROM {table}"
        if table == "llm_usage_events"
        else f"SELECT event_id, tool_args_json, route_kind FROM {table}"
    ) as cur:
        return {str(r[0]): tuple(r[1:]) for r in await cur.fetchall()}


def test_written_segments_are_deleted_and_leftovers_replayed_once(
    target: str | Path, tmp_path: Path
) -> None:
    base = tmp_path / "spool"

    async def main() -> None:
        db = await open_store(target, secret_key=secret_key(target))
        try:
            # a live recorder: every batch a segment of its own, deleted once written
            spool = UsageSpool.open(base, "agwd")
            recorder = UsageRecorder(db, flush_interval=0.01, spool=spool)
            recorder.start()
            for n in range(1, 6):
                for k in range(4):
                    assert recorder.emit(llm(n * 4 + k))
                await wait_until(lambda: recorder.written_events == n * 4)  # noqa: B023
                await wait_until(lambda: len(segments(spool.directory)) == 1, within=2.0)
            await recorder.close()
            assert segments(spool.directory) == []  # all written: nothing left
            assert (recorder.spool_failures, recorder.replayed_events) == (0, 0)

            # a process that queued 6 events, wrote 2 of them and died before deleting them:
            # its spool's lock is free, its segment holds all 6
            dead = UsageSpool.open(base, "agwd")
            unwritten = UsageRecorder(db, spool=dead)  # never started: nothing is written
            events: list[UsageEvent] = [llm(100 + n) for n in range(3)]
            events += [mcp(n) for n in range(3)]
            for event in events:
                assert unwritten.emit(event)
            committed = [events[0], events[3]]
            parts = [TableRows(e.table, e.columns(), [(id(e), e.row())]) for e in committed]
            outcome = await usage_repo.insert(db, parts)
            assert outcome.failed_by is None and len(outcome.written) == 2
            dead.close(keep=True)
            assert len(segments(dead.directory)) == 1

            # the next process on the spool writes the rest, and each row once
            spool = UsageSpool.open(base, "agwd")
            assert spool.directory == dead.directory and len(spool.leftovers) == 1
            recorder = UsageRecorder(db, spool=spool)
            recorder.start()
            await wait_until(lambda: recorder.replayed_events == 6, within=5.0)
            assert recorder.write_failures == 0
            assert await stored(db, "mcp_usage_events") == {
                f"mcp-{n}": ('{"text":"h\\u00e9llo","n":' + f"{n}}}", "mcp") for n in range(3)
            }
            llm_rows = await stored(db, "llm_usage_events")
            assert len(llm_rows) == 23
            assert llm_rows["llm-101"] == (101, '["get_weather","search"]')
            assert not spool.leftovers
            await recorder.close()
            assert segments(spool.directory) == []
        finally:
            await db.close()

    asyncio.run(main())


def test_a_spool_is_held_by_one_process_at_a_time(tmp_path: Path) -> None:
    base = tmp_path / "spool"
    first = UsageSpool.open(base, "replica-a")
    try:
        second = UsageSpool.open(base, "replica-a")  # held: the next free one
        assert (first.directory.name, second.directory.name) == ("replica-a", "replica-a.1")
        second.close()
    finally:
        first.close()
    again = UsageSpool.open(base, "replica-a")  # released by close (by the kernel on a kill)
    assert again.directory.name == "replica-a"
    again.close()


def test_a_line_that_cannot_be_spooled_is_counted_and_the_row_still_written(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def main() -> None:
        db = await open_store(tmp_path / "c.db")
        try:
            spool = UsageSpool.open(tmp_path / "spool", "agwd")
            recorder = UsageRecorder(db, spool=spool)
            recorder.start()
            odd = mcp(7)
            odd.tool_args_json = {"value": object()}  # JSON cannot hold it; the row's text can
            assert recorder.emit(odd) and recorder.emit(mcp(8))
            await wait_until(lambda: recorder.written_events == 2)
            assert recorder.spool_failures == 1
            assert set(await stored(db, "mcp_usage_events")) == {"mcp-7", "mcp-8"}
            await recorder.close()
        finally:
            await db.close()

    asyncio.run(main())
    failed = [r for r in caplog.records if r.getMessage() == "usage_spool_failed"]
    assert len(failed) == 1 and failed[0].failures == 1  # type: ignore[attr-defined]
