"""The recorder against a real SQLite store: round trips, batching, drops, failures, close."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest

from agw.store.db import Database
from agw.store.usage_repo import CHUNK_ROWS
from agw.usage.events import AcpUsageEvent, LlmUsageEvent, McpUsageEvent, UsageEvent
from agw.usage.recorder import UsageRecorder
from tests.support.usage import NOW_MS, count, rows, wait_until


def llm_event(n: int = 0, **kw: object) -> LlmUsageEvent:
    return LlmUsageEvent(started_at=NOW_MS + n, finished_at=NOW_MS + n + 10, **kw)  # type: ignore[arg-type]


def test_events_round_trip_into_their_tables(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    llm = LlmUsageEvent(
        event_id="e-llm",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
        parent_span_id="a3ce929d0e0e4736",
        agent_depth=2,
        started_at=NOW_MS,
        finished_at=NOW_MS + 1234,
        route_id="chat",
        route_protocol="openai",
        virtual_key_id="vk1",
        success=True,
        status_code=200,
        agent_id="planner",
        llm_api="openai",
        api_operation="chat_completions",
        provider_id="oai",
        provider_type="openai",
        logical_model="fast",
        upstream_model="gpt-4o-mini",
        credential_source="static",
        credential_id="cred1",
        stream=True,
        input_tokens=11,
        output_tokens=7,
        total_tokens=18,
        usage_finalized=False,
        request_tool_count=2,
        request_tool_names=["get_weather", "search"],
        tool_call_count=1,
        tool_names=["get_weather"],
        usage_source="provider",
        cached_input_tokens=4,
        cache_creation_input_tokens=3,
        reasoning_tokens=2,
        session_id="sess-1",
        cost_usd=0.0125,
        cost_source="catalog",
        limit_id="daily-usd",
        limit_action="clamped",
    )
    mcp = McpUsageEvent(
        event_id="e-mcp",
        started_at=NOW_MS + 1,
        finished_at=NOW_MS + 5,
        route_id="tools",
        success=False,
        status_code=200,
        error_type="provider_request_failed",
        request_id="7",
        service_id="weather",
        method="tools/call",
        tool_name="get_weather",
        arg_count=1,
        result_status="error",
        cancelled=True,
        tool_args_json={"city": "Paris"},
    )
    acp = AcpUsageEvent(
        event_id="e-acp",
        started_at=NOW_MS + 2,
        finished_at=NOW_MS + 2,
        route_id="/admin/acp",
        route_protocol="admin",
        success=True,
        status_code=200,
        service_id="claude",
        agent_type="claude-code",
        operation="turn",
        thread_id="t1",
        session_id="s1",
        permission_request_id="p1",
        fresh_session=True,
        event_counts_json={"agent_message_chunk": 4},
        usage_json={"total_tokens": 9},
        result_status="success",
    )

    async def main() -> UsageRecorder:
        db = await Database.open(path)
        recorder = UsageRecorder(db)
        recorder.start()
        assert recorder.emit(llm) and recorder.emit(mcp) and recorder.emit(acp)
        await recorder.close()
        await db.close()
        return recorder

    recorder = asyncio.run(main())
    assert (recorder.written_events, recorder.dropped_events, recorder.write_failures) == (3, 0, 0)

    common = {"trace_id": None, "parent_span_id": None, "agent_depth": 0, "virtual_key_id": None}
    common |= {"agent_id": None, "route_protocol": None, "error_type": None}
    common |= {"user_id": None, "org_id": None, "limit_id": None, "limit_action": None}
    assert rows(path, "llm_usage_events") == [
        {
            "event_id": "e-llm",
            "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
            "span_id": "00f067aa0ba902b7",
            "parent_span_id": "a3ce929d0e0e4736",
            "agent_depth": 2,
            "started_at": NOW_MS,
            "finished_at": NOW_MS + 1234,
            "route_id": "chat",
            "route_kind": "llm",
            "route_protocol": "openai",
            "virtual_key_id": "vk1",
            "success": 1,
            "status_code": 200,
            "error_type": None,
            "latency_ms": 1234,
            "agent_id": "planner",
            "llm_api": "openai",
            "api_operation": "chat_completions",
            "provider_id": "oai",
            "provider_type": "openai",
            "logical_model": "fast",
            "upstream_model": "gpt-4o-mini",
            "credential_source": "static",
            "credential_id": "cred1",
            "stream": 1,
            "input_tokens": 11,
            "output_tokens": 7,
            "total_tokens": 18,
            "usage_finalized": 0,
            "request_tool_count": 2,
            "request_tool_names": '["get_weather","search"]',
            "tool_call_count": 1,
            "tool_names": '["get_weather"]',
            "usage_source": "provider",
            "cached_input_tokens": 4,
            "cache_creation_input_tokens": 3,
            "reasoning_tokens": 2,
            "session_id": "sess-1",
            "acp_session_id": None,
            "user_id": None,
            "org_id": None,
            "cost_usd": 0.0125,
            "cost_source": "catalog",
            "limit_id": "daily-usd",
            "limit_action": "clamped",
        }
    ]
    (mcp_row,) = rows(path, "mcp_usage_events")
    assert mcp_row == {
        **common,
        "event_id": "e-mcp",
        "span_id": mcp.span_id,
        "started_at": NOW_MS + 1,
        "finished_at": NOW_MS + 5,
        "route_id": "tools",
        "route_kind": "mcp",
        "success": 0,
        "status_code": 200,
        "error_type": "provider_request_failed",
        "latency_ms": 4,
        "request_id": "7",
        "service_id": "weather",
        "method": "tools/call",
        "tool_name": "get_weather",
        "presented_tool_name": None,
        "executed_tool_name": None,
        "execution_mode": None,
        "policy_action": None,
        "resource_uri": None,
        "prompt_name": None,
        "completion_ref_type": None,
        "completion_argument": None,
        "arg_count": 1,
        "result_status": "error",
        "cancelled": 1,
        "tool_args_json": '{"city":"Paris"}',
        "acp_session_id": None,
        "mcp_session_id": None,
        "session_id": None,
        "cost_usd": None,
    }
    (acp_row,) = rows(path, "acp_usage_events")
    assert acp_row == {
        **common,
        "event_id": "e-acp",
        "span_id": acp.span_id,
        "started_at": NOW_MS + 2,
        "finished_at": NOW_MS + 2,
        "route_id": "/admin/acp",
        "route_kind": "acp",
        "route_protocol": "admin",
        "success": 1,
        "status_code": 200,
        "latency_ms": 0,
        "service_id": "claude",
        "agent_type": "claude-code",
        "operation": "turn",
        "thread_id": "t1",
        "session_id": "s1",
        "permission_request_id": "p1",
        "fresh_session": 1,
        "event_counts_json": '{"agent_message_chunk":4}',
        "usage_json": '{"total_tokens":9}',
        "result_status": "success",
    }


def test_a_backlog_is_written_in_batches_of_a_few_statements_each(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    statements: list[str] = []
    seen: list[UsageEvent] = []
    kinds = (LlmUsageEvent, McpUsageEvent, AcpUsageEvent)
    events = [kinds[i % 3](started_at=NOW_MS + i, finished_at=NOW_MS + i) for i in range(600)]

    async def main() -> UsageRecorder:
        db = await Database.open(path)
        await db.conn.set_trace_callback(statements.append)
        recorder = UsageRecorder(db, batch_size=256, listeners=[seen.append])
        assert all(recorder.emit(e) for e in events)
        assert recorder.queue_depth == 600
        recorder.start()
        await recorder.close()
        await db.conn.set_trace_callback(None)  # type: ignore[arg-type]
        await db.close()
        return recorder

    recorder = asyncio.run(main())
    assert recorder.written_events == 600
    assert recorder.queue_depth == 0
    # 256 + 256 + 88 events, the three tables mixed in each batch: per batch and table, a few
    # multi-row INSERTs of the CHUNK_ROWS sizes, each its own transaction (Database.write):
    # never a statement per row, and few row counts (SQLite caches a statement per text).
    inserts = [s for s in statements if s.startswith("INSERT")]
    rows = [s.count("), (") + 1 for s in inserts]
    assert sum(rows) == 600
    assert set(rows) <= set(CHUNK_ROWS) and 64 in rows
    assert len(inserts) <= 3 * 3 * 5
    assert not any(s.startswith("BEGIN") for s in statements)
    assert seen == events
    assert [count(path, cls.table) for cls in kinds] == [200, 200, 200]


def test_a_full_queue_drops_and_counts(tmp_path: Path) -> None:
    path = tmp_path / "c.db"

    async def main() -> tuple[list[bool], UsageRecorder]:
        db = await Database.open(path)
        recorder = UsageRecorder(db, queue_size=2)
        results = [recorder.emit(llm_event(n)) for n in range(3)]
        assert recorder.dropped_events == 1
        assert recorder.queue_depth == 2
        recorder.start()
        await recorder.close()
        await db.close()
        return results, recorder

    results, recorder = asyncio.run(main())
    assert results == [True, True, False]
    assert (recorder.dropped_events, recorder.written_events) == (1, 2)
    assert [r["started_at"] for r in rows(path, "llm_usage_events")] == [NOW_MS, NOW_MS + 1]


def test_emit_after_close_drops(tmp_path: Path) -> None:
    async def main() -> UsageRecorder:
        db = await Database.open(tmp_path / "c.db")
        recorder = UsageRecorder(db)
        recorder.start()
        await recorder.close()
        assert recorder.emit(llm_event()) is False
        await recorder.close()  # a second close is a no-op
        await db.close()
        return recorder

    recorder = asyncio.run(main())
    assert (recorder.dropped_events, recorder.written_events) == (1, 0)


def test_a_failed_write_is_counted_and_the_writer_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.db"
    secret_args: dict[str, object] = {"password": "hunter2-do-not-log"}

    async def main() -> UsageRecorder:
        db = await Database.open(path)
        recorder = UsageRecorder(db, flush_interval=0)
        recorder.start()
        with closing(sqlite3.connect(path)) as other:
            other.execute("DROP TABLE llm_usage_events")
            other.commit()
        recorder.emit(llm_event(tool_names=["hunter2-do-not-log"]))
        recorder.emit(llm_event(1))
        await wait_until(lambda: recorder.write_failures == 2)
        recorder.emit(
            McpUsageEvent(started_at=NOW_MS, finished_at=NOW_MS, tool_args_json=secret_args)
        )
        await wait_until(lambda: recorder.written_events == 1)
        await recorder.close()
        await db.close()
        return recorder

    with caplog.at_level(logging.WARNING, logger="agw.usage.recorder"):
        recorder = asyncio.run(main())
    assert (recorder.write_failures, recorder.written_events, recorder.dropped_events) == (2, 1, 0)
    assert count(path, "mcp_usage_events") == 1
    failures = [r for r in caplog.records if r.getMessage() == "usage_write_failed"]
    assert failures  # at most one line per LOG_INTERVAL_S: one or two batches, one line
    assert len(failures) == 1 and failures[0].__dict__["events"] in (1, 2)
    assert "no such table" in failures[0].__dict__["detail"]
    assert "hunter2" not in caplog.text
    assert all("hunter2" not in json.dumps(r.__dict__, default=str) for r in caplog.records)


def test_an_event_that_cannot_be_encoded_loses_only_itself(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    circular: dict[str, object] = {}
    circular["self"] = circular

    async def main() -> UsageRecorder:
        db = await Database.open(path)
        recorder = UsageRecorder(db)
        recorder.emit(llm_event(0))
        recorder.emit(McpUsageEvent(started_at=NOW_MS, finished_at=NOW_MS, tool_args_json=circular))
        recorder.emit(llm_event(1))
        recorder.start()
        await recorder.close()
        await db.close()
        return recorder

    recorder = asyncio.run(main())
    assert (recorder.write_failures, recorder.written_events) == (1, 2)
    assert count(path, "llm_usage_events") == 2
    assert count(path, "mcp_usage_events") == 0


def test_a_failing_listener_does_not_stop_the_writer(tmp_path: Path) -> None:
    seen: list[str] = []

    def broken(event: UsageEvent) -> None:
        raise RuntimeError("listener bug")

    async def main() -> UsageRecorder:
        db = await Database.open(tmp_path / "c.db")
        recorder = UsageRecorder(db, listeners=[broken])
        recorder.add_listener(lambda e: seen.append(e.event_id))
        recorder.start()
        recorder.emit(llm_event(0, event_id="a"))
        recorder.emit(llm_event(1, event_id="b"))
        await recorder.close()
        await db.close()
        return recorder

    recorder = asyncio.run(main())
    assert recorder.written_events == 2
    assert seen == ["a", "b"]


def test_close_flushes_without_waiting_for_the_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "c.db"

    async def main() -> tuple[float, UsageRecorder]:
        db = await Database.open(path)
        recorder = UsageRecorder(db, flush_interval=30.0)
        recorder.start()
        for n in range(5):
            recorder.emit(llm_event(n))
        await asyncio.sleep(0.05)  # the writer now holds a batch and waits for it to fill
        begin = time.monotonic()
        await recorder.close(timeout=10.0)
        elapsed = time.monotonic() - begin
        await db.close()
        return elapsed, recorder

    elapsed, recorder = asyncio.run(main())
    assert elapsed < 2.0
    assert (recorder.written_events, recorder.dropped_events) == (5, 0)
    assert count(path, "llm_usage_events") == 5


def test_close_flushes_what_was_queued_before_start(tmp_path: Path) -> None:
    path = tmp_path / "c.db"

    async def main() -> UsageRecorder:
        db = await Database.open(path)
        recorder = UsageRecorder(db)
        recorder.emit(llm_event())
        await recorder.close()
        await db.close()
        return recorder

    assert asyncio.run(main()).written_events == 1
    assert count(path, "llm_usage_events") == 1


def test_close_gives_up_after_its_timeout_and_counts_the_rest_as_dropped(tmp_path: Path) -> None:
    path = tmp_path / "c.db"

    async def main() -> UsageRecorder:
        db = await Database.open(path)
        recorder = UsageRecorder(db, flush_interval=0)
        recorder.start()
        async with db.transaction():  # the store is busy for longer than close() will wait
            for n in range(3):
                recorder.emit(llm_event(n))
            await asyncio.sleep(0.05)
            begin = time.monotonic()
            await recorder.close(timeout=0.2)
            assert time.monotonic() - begin < 2.0
        await db.close()
        return recorder

    recorder = asyncio.run(main())
    assert (recorder.dropped_events, recorder.written_events, recorder.write_failures) == (3, 0, 0)
    assert recorder.queue_depth == 0
    assert count(path, "llm_usage_events") == 0


# (A trigger's RAISE(FAIL) keeps the rows its multi-row INSERT wrote before the bad one; their
# second insert then fails on the primary key and they are counted as rejected though stored.)
@pytest.mark.parametrize("action", ["ABORT", "ROLLBACK"])
def test_a_row_the_store_refuses_loses_only_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, action: str
) -> None:
    path = tmp_path / "c.db"

    async def main() -> UsageRecorder:
        db = await Database.open(path)
        with closing(sqlite3.connect(path)) as other:
            other.execute(
                "CREATE TRIGGER refuse BEFORE INSERT ON llm_usage_events "
                "WHEN NEW.session_id LIKE 'poison%' "
                f"BEGIN SELECT RAISE({action}, 'refused by the store'); END"
            )
            other.commit()
        recorder = UsageRecorder(db)
        for i in range(20):
            poison = i in (3, 11)
            recorder.emit(llm_event(i, session_id="poison-hunter2" if poison else f"s{i}"))
            recorder.emit(McpUsageEvent(started_at=NOW_MS + i, finished_at=NOW_MS + i))
        recorder.start()
        await recorder.close()
        await db.close()
        return recorder

    with caplog.at_level(logging.WARNING, logger="agw.usage.recorder"):
        recorder = asyncio.run(main())
    assert (recorder.written_events, recorder.rejected_events, recorder.write_failures) == (
        38,
        2,
        2,
    )
    assert count(path, "llm_usage_events") == 18
    assert count(path, "mcp_usage_events") == 20
    (line,) = [r for r in caplog.records if r.getMessage() == "usage_row_rejected"]
    assert (line.__dict__["events"], line.__dict__["written"]) == (2, 38)
    assert "refused by the store" in line.__dict__["detail"]
    assert "hunter2" not in caplog.text


def delete_store(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink()


def test_a_deleted_store_loses_the_rows_counted_and_writes_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "c.db"

    async def main() -> UsageRecorder:
        db = await Database.open(path)
        recorder = UsageRecorder(db, flush_interval=0)
        recorder.start()
        delete_store(path)
        for i in range(5):
            recorder.emit(llm_event(i))
            await wait_until(lambda n=i: recorder.write_failures == n + 1)  # type: ignore[misc]
        await recorder.close()
        await db.close()
        return recorder

    with caplog.at_level(logging.WARNING):
        recorder = asyncio.run(main())
    assert (recorder.write_failures, recorder.written_events) == (5, 0)
    assert not path.exists()
    failed = [r for r in caplog.records if r.getMessage() == "usage_write_failed"]
    assert len(failed) == 1  # then quiet for LOG_INTERVAL_S
    assert "c.db was deleted" in failed[0].__dict__["detail"]
    assert [r.levelname for r in caplog.records if r.getMessage() == "store_unavailable"] == [
        "ERROR"
    ]
