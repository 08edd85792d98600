"""Helpers for the usage tests: read a store back with plain sqlite3, wait on a condition."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

DAY_MS = 86_400_000
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def rows(db_path: Path, table: str, order_by: str = "started_at, event_id") -> list[dict[str, Any]]:
    with closing(sqlite3.connect(db_path)) as conn:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(f"SELECT * FROM {table} ORDER BY {order_by}")]


def count(db_path: Path, table: str) -> int:
    with closing(sqlite3.connect(db_path)) as conn:
        return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def table_columns(db_path: Path, table: str) -> list[str]:
    with closing(sqlite3.connect(db_path)) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


async def wait_until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    # Polls the recorder's public counters: it offers no event to wait on, by design.
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
