"""The usage tables' SQL lives in agw/store (usage_sql builds it from typed arguments,
usage_repo runs it): names are checked, values bound, and no other module writes SQL."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest

from agw.store import usage_repo, usage_sql
from agw.store.db import Database
from agw.store.usage_sql import Aggregate, Constant, Filter, Owner, Part
from agw.usage.events import McpUsageEvent
from tests.support.usage import NOW_MS

REPO = Path(__file__).resolve().parents[2]
SQL = re.compile(
    r"\b(SELECT\s.+\sFROM|INSERT\s+INTO|DELETE\s+FROM|UPDATE\s+\w+\s+SET|CREATE\s+(TABLE|INDEX))\b"
)


def test_no_sql_outside_the_store() -> None:
    found = []
    for package in ("agw", "agwctl", "agwd"):
        for path in (REPO / package).rglob("*.py"):
            if path.is_relative_to(REPO / "agw" / "store"):
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if SQL.search(line):
                    found.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not found, "\n".join(found)


def test_names_are_checked_values_bound() -> None:
    text, args = usage_sql.rows(
        "mcp_usage_events", Filter(equals=(("tool_name", "x'); DROP TABLE t; --"),)), 5
    )
    assert "DROP" not in text and args == ["x'); DROP TABLE t; --", 5]
    with pytest.raises(ValueError, match="not a column"):
        usage_sql.rows("mcp_usage_events", Filter(equals=(("tool_name = 1 OR 1", "x"),)), 5)
    measures = (("request_count", Aggregate("count")),)
    with pytest.raises(ValueError, match="cannot order by"):
        usage_sql.groups("mcp_usage_events", measures, Filter(), "tool_name", "1; --", 5)
    with pytest.raises(ValueError, match="not a column"):
        usage_sql.series("mcp_usage_events", measures, Filter(), 1000, "+x", 5)


def test_an_owner_with_nothing_matches_nothing() -> None:
    text, args = usage_sql.where_sql(Filter(owner=Owner("")))
    assert (text, args) == (" WHERE 1 = 0", [])
    text, args = usage_sql.where_sql(Filter(owner=Owner("a", ("r1", "r2"), ("s",))))
    assert text == " WHERE (agent_id = ? OR route_id IN (?, ?) OR service_id IN (?))"
    assert args == ["a", "r1", "r2", "s"]


def test_a_multi_row_insert_has_one_group_per_row() -> None:
    text = usage_sql.insert("t", ("a", "b"), 3)
    assert text == "INSERT INTO t (a, b) VALUES (?, ?), (?, ?), (?, ?)"
    assert McpUsageEvent.insert_sql() == usage_sql.insert(
        "mcp_usage_events", McpUsageEvent.columns()
    )


def test_reads_over_several_tables_bind_each_part(tmp_path: Path) -> None:
    """A counted value (``method = 'tools/call'``) and a constant are bound once per table, in
    the order of the text."""

    def event(i: int, method: str, table_route: str) -> McpUsageEvent:
        return McpUsageEvent(
            started_at=NOW_MS + i,
            finished_at=NOW_MS + i + 10,
            route_id=table_route,
            method=method,
            success=i % 2 == 0,
        )

    async def run() -> None:
        db = await Database.open(tmp_path / "u.db")
        try:
            events = [event(i, "tools/call" if i < 3 else "tools/list", "r") for i in range(5)]
            batch = usage_repo.TableRows("mcp_usage_events", McpUsageEvent.columns())
            batch.rows += [(id(e), e.row()) for e in events]
            outcome = await usage_repo.insert(db, [batch])
            assert len(outcome.written) == 5
            where = Filter(start_ms=NOW_MS + 1)
            parts = [Part("mcp_usage_events", where), Part("mcp_usage_events", where)]
            measures = (
                ("request_count", Aggregate("count")),
                ("calls", Aggregate("count_equal", "method", "tools/call")),
                ("avg_latency_ms", Aggregate("avg", "latency_ms")),
            )
            rows = await usage_repo.read_union_groups(
                db, parts, measures, group="route_id", order="calls", limit=10
            )
            assert rows == [("r", 8, 4, 10.0)]
            columns = (("kind", Constant("mcp")), ("started_at", "started_at"))
            names, found = await usage_repo.read_union(
                db,
                [Part("mcp_usage_events", where, columns)] * 2,
                newest_first=False,
                limit=3,
            )
            assert names == ["kind", "started_at"]
            assert found == [("mcp", NOW_MS + 1), ("mcp", NOW_MS + 1), ("mcp", NOW_MS + 2)]
            assert await usage_repo.delete_before(db, ["mcp_usage_events"], NOW_MS + 2) == 2
        finally:
            await db.close()

    asyncio.run(run())
