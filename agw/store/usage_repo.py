"""The usage tables: insert a batch of rows, read the metrics API's answers, delete old rows.

The seam a PostgreSQL store plugs into: the usage layer (``agw/usage``) passes typed arguments
(tables, columns and values; :mod:`agw.store.usage_sql`'s filters, aggregates and projections)
and gets rows back; every statement is built in :mod:`agw.store.usage_sql`.

Reads go through :meth:`Database.reader` (its own connection and thread: a query aggregating a
million rows holds up neither the usage writer nor config reads). Inserts go through
:meth:`Database.write`: per table, one multi-row ``INSERT`` per chunk of :data:`CHUNK_ROWS`
rows, each statement its own transaction (fewer statements, fewer chances for a change to the
store's files to land while SQLite runs one). A chunk that fails for one of its rows is
inserted again row by row, leaving out the rows that fail; an error of the store stops the
writing, and what was written before it stays written. A PostgreSQL store (agw/store/pg.py)
runs the same statements, translated, on its own connections.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import psycopg

from agw.errors import StoreUnavailable
from agw.store import usage_sql as sql
from agw.store.db import Database, Statements
from agw.store.engine import Store
from agw.store.usage_sql import (
    CHUNK_ROWS,
    Filter,
    Measures,
    Part,
    Row,
    Statement,
)

__all__ = [
    "CHUNK_ROWS",
    "InsertOutcome",
    "TableRows",
    "delete_before",
    "error_detail",
    "insert",
    "read_groups",
    "read_rows",
    "read_series",
    "read_totals",
    "read_union",
    "read_union_groups",
]

# ----------------------------------------------------------------------------------- reads


async def _fetch(db: Store, statement: Statement) -> tuple[list[str], list[Row]]:
    text, args = statement
    conn = await db.reader()
    async with conn.execute(text, args) as cur:
        found = [tuple(r) for r in await cur.fetchall()]
        names = [d[0] for d in cur.description]
    return names, found


async def read_totals(
    db: Store, table: str, measures: Measures, where: Filter, *, span: bool = False
) -> Row:
    """The measures over the matching rows of ``table`` (one row; with ``span``, then the first
    and the last ``started_at``, None without rows)."""
    _, found = await _fetch(db, sql.totals(table, measures, where, span=span))
    return found[0]


async def read_rows(
    db: Store, table: str, where: Filter, limit: int
) -> tuple[list[str], list[Row]]:
    """The column names of ``table`` and its first ``limit`` matching rows, newest first."""
    return await _fetch(db, sql.rows(table, where, limit))


async def read_series(
    db: Store,
    table: str,
    measures: Measures,
    where: Filter,
    *,
    width_ms: int,
    group: str | None,
    limit: int,
) -> list[Row]:
    """``(bucket_ms[, group_value], *measures)`` per bucket of ``width_ms`` (and group),
    ascending; at most ``limit`` rows."""
    _, found = await _fetch(db, sql.series(table, measures, where, width_ms, group, limit))
    return found


async def read_groups(
    db: Store,
    table: str,
    measures: Measures,
    where: Filter,
    *,
    group: str,
    order: str,
    limit: int,
) -> list[Row]:
    """``(group_value, *measures)`` per value of ``group``, largest ``order`` first (ties by
    group value)."""
    _, found = await _fetch(db, sql.groups(table, measures, where, group, order, limit))
    return found


async def read_union(
    db: Store, parts: Sequence[Part], *, newest_first: bool, limit: int
) -> tuple[list[str], list[Row]]:
    """The answered names and the first ``limit`` rows of several tables, each projected by its
    part, by ``started_at`` (newest first, or oldest first)."""
    derived = db.dialect == "sqlite"
    return await _fetch(
        db, sql.union_rows(parts, newest_first=newest_first, limit=limit, derived=derived)
    )


async def read_union_groups(
    db: Store,
    parts: Sequence[Part],
    measures: Measures,
    *,
    group: str,
    order: str,
    limit: int,
) -> list[Row]:
    """:func:`read_groups` over several tables as one."""
    _, found = await _fetch(db, sql.union_groups(parts, measures, group, order, limit))
    return found


# ---------------------------------------------------------------------------------- writes


@dataclass(slots=True)
class TableRows:
    """The rows of one table to insert: each as (key, column values in ``columns`` order); the
    outcome names rows by their key."""

    table: str
    columns: tuple[str, ...]
    rows: list[tuple[int, tuple[object, ...]]] = field(default_factory=list)


@dataclass(slots=True)
class InsertOutcome:
    written: set[int] = field(default_factory=set)  # the keys of the rows written
    rejected: set[int] = field(default_factory=set)  # the keys of the rows that failed alone
    rejected_by: Exception | None = None  # the last rejected row's error
    failed_by: Exception | None = None  # the error that stopped the writing, if one did


async def insert(
    db: Store, batch: Sequence[TableRows], *, skip_existing: bool = False
) -> InsertOutcome:
    """Insert ``batch`` in one call on the write connection's thread (see the module doc; on
    PostgreSQL, the same statements, each its own transaction). Raises only when the store
    refuses before the first statement. ``skip_existing``: a row whose ``event_id`` is stored
    already is left out, and counted as written (the usage spool's replay)."""
    if not isinstance(db, Database):
        return await _insert_async(db, batch, skip_existing)

    def work(statements: Statements) -> InsertOutcome:
        return _insert(batch, statements, skip_existing)

    return await db.write(work)


_MAX_PARAMS = 65535  # PostgreSQL's limit on the parameters of one statement


async def _insert_async(
    db: Store, batch: Sequence[TableRows], skip_existing: bool
) -> InsertOutcome:
    """PostgreSQL's way: the same statements, each in its own transaction."""
    out = InsertOutcome()
    try:
        for part in batch:
            for chunk in _chunks(part.rows, _MAX_PARAMS // len(part.columns)):
                text = sql.insert(part.table, part.columns, len(chunk), skip_existing=skip_existing)
                try:
                    async with db.transaction() as conn:
                        await conn.execute(text, [v for _, row in chunk for v in row])
                except db.row_errors:
                    for key, row in chunk:
                        try:
                            async with db.transaction() as conn:
                                one = sql.insert(
                                    part.table, part.columns, skip_existing=skip_existing
                                )
                                await conn.execute(one, row)
                        except db.row_errors as exc:
                            out.rejected.add(key)
                            out.rejected_by = exc
                        else:
                            out.written.add(key)
                else:
                    out.written.update(key for key, _ in chunk)
    except Exception as exc:
        out.failed_by = exc
    return out


def _insert(
    batch: Sequence[TableRows], statements: Statements, skip_existing: bool
) -> InsertOutcome:
    out = InsertOutcome()
    try:
        for part in batch:
            for chunk in _chunks(part.rows, statements.max_params() // len(part.columns)):
                text = sql.insert(part.table, part.columns, len(chunk), skip_existing=skip_existing)
                try:
                    statements.execute(text, [v for _, row in chunk for v in row])
                except statements.row_errors:
                    _insert_each(part, chunk, statements, out, skip_existing)
                else:
                    out.written.update(key for key, _ in chunk)
    except Exception as exc:
        out.failed_by = exc
    return out


def _insert_each(
    part: TableRows,
    chunk: list[tuple[int, tuple[object, ...]]],
    statements: Statements,
    out: InsertOutcome,
    skip_existing: bool,
) -> None:
    text = sql.insert(part.table, part.columns, skip_existing=skip_existing)
    for key, row in chunk:
        try:
            statements.execute(text, row)
        except statements.row_errors as exc:
            out.rejected.add(key)
            out.rejected_by = exc
        else:
            out.written.add(key)


def _chunks(
    rows: list[tuple[int, tuple[object, ...]]], most: int
) -> Iterator[list[tuple[int, tuple[object, ...]]]]:
    """``rows`` in chunks of the ``CHUNK_ROWS`` sizes, largest first, none over ``most`` rows
    (a SQLite built with a low limit on ``?`` per statement)."""
    start = 0
    for size in CHUNK_ROWS:
        size = max(1, min(size, most))
        while len(rows) - start >= size:
            yield rows[start : start + size]
            start += size


def error_detail(exc: Exception) -> str:
    """The error's message where it names no value: SQLite's name tables and constraints (a
    trigger's, what the store's owner wrote), PostgreSQL's primary message too (its detail may
    hold values), ours say why the store is unavailable. Others (a value the driver cannot
    bind) are named by type only."""
    if isinstance(exc, sqlite3.Error | StoreUnavailable):
        return str(exc)[:200]
    if isinstance(exc, psycopg.Error):  # its primary message; the detail may name values
        return (exc.diag.message_primary or "")[:200]
    return ""


# ------------------------------------------------------------------------------- retention


async def delete_before(db: Store, tables: Sequence[str], cutoff_ms: int) -> int:
    """Delete the rows of ``tables`` that started before ``cutoff_ms``, in one transaction;
    returns how many went."""
    deleted = 0
    async with db.transaction() as conn:
        for table in tables:
            text, args = sql.delete_before(table, cutoff_ms)
            cursor = await conn.execute(text, args)
            deleted += max(0, cursor.rowcount)
            await cursor.close()
    return deleted
