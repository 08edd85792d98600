"""Migrations 0002, 0004, 0005 and 0010 and the event classes against the real tables."""

from __future__ import annotations

import asyncio
import sqlite3
from contextlib import closing
from pathlib import Path

from agw.store.db import Database, migrations_dir
from agw.usage.events import EVENT_TYPES
from tests.support.usage import rows, table_columns

NEW_COLUMNS = {
    "usage_source": (None, 0),
    "cached_input_tokens": ("0", 1),
    "cache_creation_input_tokens": ("0", 1),
    "reasoning_tokens": ("0", 1),
    "session_id": (None, 0),
}


LLM = "llm_usage_events"


def latest_version() -> int:
    """The schema version of a fresh store: the number of the last migration."""
    return max(int(p.name[:4]) for p in migrations_dir().glob("[0-9][0-9][0-9][0-9]_*.sql"))


def open_and_close(path: Path) -> None:
    async def main() -> None:
        db = await Database.open(path)
        await db.close()

    asyncio.run(main())


def test_fresh_store_is_at_version_2_with_the_new_llm_columns(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    open_and_close(path)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version()
        info = {r[1]: (r[4], r[3]) for r in conn.execute("PRAGMA table_info(llm_usage_events)")}
    for name, (default, notnull) in NEW_COLUMNS.items():
        assert info[name] == (default, notnull), name


def test_a_version_1_store_is_migrated_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript((migrations_dir() / "0001_initial.sql").read_text())
        conn.execute(
            "INSERT INTO llm_usage_events (event_id, span_id, started_at, finished_at, "
            "input_tokens) VALUES ('old', 's', 1, 2, 7)"
        )
        conn.execute("PRAGMA user_version = 1")
        conn.commit()
    open_and_close(path)
    (old,) = rows(path, "llm_usage_events")
    assert old["event_id"] == "old"
    assert old["input_tokens"] == 7
    assert old["usage_source"] is None
    assert old["session_id"] is None
    assert (old["cached_input_tokens"], old["cache_creation_input_tokens"]) == (0, 0)
    assert old["reasoning_tokens"] == 0
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version()


def test_event_fields_are_exactly_the_table_columns_in_order(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    open_and_close(path)
    for cls in EVENT_TYPES:
        assert list(cls.columns()) == table_columns(path, cls.table), cls.__name__


def test_migration_4_moves_the_mcp_handle_and_links_acp_sessions(tmp_path: Path) -> None:
    """Schema 4: the MCP table's old session_id (the masked Mcp-Session-Id) becomes
    mcp_session_id, and session_id is the agent session: the ACP session where one is known."""
    path = tmp_path / "c.db"
    with closing(sqlite3.connect(path)) as conn:
        for number in (1, 2, 3):
            (script,) = migrations_dir().glob(f"000{number}_*.sql")
            conn.executescript(script.read_text())
        conn.executemany(
            "INSERT INTO mcp_usage_events (event_id, span_id, started_at, finished_at, "
            "session_id, acp_session_id) VALUES (?, 's', 1, 2, ?, ?)",
            [("a", "abcd1234****", "sess-acp"), ("b", "ffff0000****", None)],
        )
        conn.execute("PRAGMA user_version = 3")
        conn.commit()
    open_and_close(path)
    got = {
        r["event_id"]: (r["mcp_session_id"], r["session_id"])
        for r in rows(path, "mcp_usage_events")
    }
    assert got == {"a": ("abcd1234****", "sess-acp"), "b": ("ffff0000****", None)}
    with closing(sqlite3.connect(path)) as conn:
        indexes = {r[1] for r in conn.execute("PRAGMA index_list(mcp_usage_events)")}
    assert {"idx_mcp_usage_session", "idx_mcp_usage_service", "idx_mcp_usage_tool"} <= indexes


def test_migration_5_adds_the_principal_to_every_usage_table(tmp_path: Path) -> None:
    """Schema 5: user_id and org_id on the three usage tables, NULL on the rows written before
    (a virtual key's calls name no user), with the indexes the user and org filters use."""
    path = tmp_path / "c.db"
    with closing(sqlite3.connect(path)) as conn:
        for number in (1, 2, 3, 4):
            (script,) = migrations_dir().glob(f"000{number}_*.sql")
            conn.executescript(script.read_text())
        for table in ("llm_usage_events", "mcp_usage_events", "acp_usage_events"):
            conn.execute(
                f"INSERT INTO {table} (event_id, span_id, started_at, finished_at) "
                "VALUES ('old', 's', 1, 2)"
            )
        conn.execute("PRAGMA user_version = 4")
        conn.commit()
    open_and_close(path)
    for table in ("llm_usage_events", "mcp_usage_events", "acp_usage_events"):
        columns = table_columns(path, table)
        at = columns.index("user_id")
        assert columns[at : at + 2] == ["user_id", "org_id"], table
        later = {LLM: ["cost_usd", "cost_source"], "mcp_usage_events": ["cost_usd"]}
        limits = ["limit_id", "limit_action"]  # migration 10
        assert columns[at + 2 :] == [*later.get(table, []), *limits], table
        (old,) = rows(path, table)
        assert (old["user_id"], old["org_id"]) == (None, None), table
    with closing(sqlite3.connect(path)) as conn:
        indexes = {r[1] for r in conn.execute("SELECT * FROM sqlite_master WHERE type='index'")}
        plan = " ".join(
            str(r[3])
            for r in conn.execute(
                "EXPLAIN QUERY PLAN SELECT COUNT(*) FROM llm_usage_events "
                "WHERE user_id = ? AND started_at >= ?",
                ("a@example.com", 0),
            )
        )
    assert {"idx_llm_usage_user", "idx_llm_usage_org", "idx_mcp_usage_user"} <= indexes
    assert "idx_llm_usage_user" in plan


def test_migration_10_adds_the_limits_tables_and_the_limit_columns(tmp_path: Path) -> None:
    """Schema 10: the limits family table, the limit backend's counters, and limit_id /
    limit_action on the three usage tables (NULL on the rows written before), with partial
    indexes for the metrics API's filters on them."""
    path = tmp_path / "c.db"
    with closing(sqlite3.connect(path)) as conn:
        for number in range(1, 6):  # migration 6 seals secrets: a step of Database.migrate
            (script,) = migrations_dir().glob(f"{number:04d}_*.sql")
            conn.executescript(script.read_text())
        conn.execute("PRAGMA user_version = 5")
        for table in ("llm_usage_events", "mcp_usage_events", "acp_usage_events"):
            conn.execute(
                f"INSERT INTO {table} (event_id, span_id, started_at, finished_at) "
                "VALUES ('old', 's', 1, 2)"
            )
        conn.commit()
    open_and_close(path)
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == latest_version()
        family = [r[1:6] for r in conn.execute("PRAGMA table_info(limits)")]
        policies = [r[1:6] for r in conn.execute("PRAGMA table_info(authorization_policies)")]
        counters = [(r[1], r[2], r[5]) for r in conn.execute("PRAGMA table_info(limit_counters)")]
        indexes = {r[1] for r in conn.execute("SELECT * FROM sqlite_master WHERE type='index'")}
        plans = {
            f"idx_{table[:3]}_usage_{column.removesuffix('_id')}": " ".join(
                str(r[3])
                for r in conn.execute(
                    f"EXPLAIN QUERY PLAN SELECT COUNT(*) FROM {table} "
                    f"WHERE {column} = ? AND started_at >= ?",
                    ("x", 0),
                )
            )
            for table in ("llm_usage_events", "mcp_usage_events", "acp_usage_events")
            for column in ("limit_id", "limit_action")
        }
    assert family == policies
    assert counters == [
        ("limit_id", "TEXT", 1),
        ("subject", "TEXT", 2),
        ("window", "TEXT", 0),
        ("window_start", "INTEGER", 0),
        ("cost_usd", "REAL", 0),
        ("total_tokens", "INTEGER", 0),
        ("input_tokens", "INTEGER", 0),
        ("output_tokens", "INTEGER", 0),
        ("requests", "INTEGER", 0),
        ("updated_at", "INTEGER", 0),
    ]
    for table in ("llm_usage_events", "mcp_usage_events", "acp_usage_events"):
        assert table_columns(path, table)[-2:] == ["limit_id", "limit_action"], table
        (old,) = rows(path, table)
        assert (old["limit_id"], old["limit_action"]) == (None, None), table
    assert len(plans) == 6 and set(plans) <= indexes
    for index, plan in plans.items():
        assert index in plan, plan
