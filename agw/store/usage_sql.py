"""The usage tables' SQL, built from typed arguments: what the usage layer may ask of the store.

The usage layer never writes SQL. It says which rows (:class:`Filter`), how to aggregate them
(:class:`Aggregate`, named by the metric catalog, ``agw/usage/measures.py``) and which columns
to answer (:data:`Projection`); the functions here turn that into one statement and its bound
values, and :mod:`agw.store.usage_repo` runs it. A PostgreSQL store runs the same text,
translated (:func:`agw.store.pg.translate`).

Names are formatted into the text (tables, columns, answer names: they come from the catalog,
never from a request, and each is checked against :data:`_NAME` here); values are always bound.
Filters are equalities on indexed columns and a ``started_at`` range, so the
``(column, started_at)`` indexes of the usage tables serve them. Grouped columns are written
``+column``: SQLite then picks its index from the filters (a ``from`` window, a key) instead of
walking the whole index of the grouped column to save a sort, which on a large table costs far
more than the sort. ``tool_call_count > 0`` is written as a literal: a bound 0 would not match
the condition of the partial index on it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

SqlValue = int | float | str | bytes | None
Row = tuple[SqlValue, ...]
Statement = tuple[str, list[SqlValue]]
"""A statement's text and its bound values, in order."""

_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")

# ---------------------------------------------------------------------------- the arguments

How = Literal["count", "sum", "count_false", "count_equal", "avg"]


@dataclass(frozen=True, slots=True)
class Aggregate:
    """How one measure folds the rows of a group into a number.

    ``count``: the rows; ``sum``: the sum of ``column`` (0 over no rows); ``count_false``: the
    rows whose 0/1 ``column`` is not 1; ``count_equal``: the rows whose ``column`` is ``value``;
    ``avg``: the mean of ``column`` (NULL over no rows).
    """

    how: How
    column: str | None = None
    value: str | None = None


Measures = Sequence[tuple[str, Aggregate]]
"""The measures of one read: (answer name, aggregate), in answer order."""


@dataclass(frozen=True, slots=True)
class Owner:
    """The rows of one agent (reference §5.10): its ``agent_id``, or one of its routes, or one
    of its services. With none of the three, no row."""

    agent_id: str
    route_ids: tuple[str, ...] = ()
    service_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Filter:
    """Which rows of one usage table: every condition given holds."""

    start_ms: int | None = None
    """``started_at`` at or after (unix ms)."""
    end_ms: int | None = None
    """``started_at`` at or before (unix ms)."""
    equals: tuple[tuple[str, str | int], ...] = ()
    """(column, value): the column equals the value."""
    success: bool | None = None
    requested_tool: str | None = None
    """LLM rows: a request that offered a tool whose name contains this text."""
    tool_use: bool | None = None
    """LLM rows: the answer called a tool (True) or none (False)."""
    present: str | None = None
    """A column that is not NULL."""
    owner: Owner | None = None


@dataclass(frozen=True, slots=True)
class Constant:
    """A value every row of a part answers (which table a row of a union came from)."""

    value: str


Source = str | tuple[str, ...] | Constant | None
"""Where an answered column comes from: a column, the first non-NULL of columns, a constant,
or nothing (NULL: the table has no such column)."""
Projection = tuple[tuple[str, Source], ...]
"""The answered columns: (answer name, source), in order."""


@dataclass(frozen=True, slots=True)
class Part:
    """One table's share of a read over several tables."""

    table: str
    where: Filter
    columns: Projection = ()


# -------------------------------------------------------------------------------- building


def _name(name: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"not a column or table name: {name!r}")
    return name


def where_sql(where: Filter) -> tuple[str, list[SqlValue]]:
    """`` WHERE ...`` (empty without conditions) and its values."""
    clauses: list[str] = []
    args: list[SqlValue] = []
    if where.start_ms is not None:
        clauses.append("started_at >= ?")
        args.append(where.start_ms)
    if where.end_ms is not None:
        clauses.append("started_at <= ?")
        args.append(where.end_ms)
    for column, value in where.equals:
        clauses.append(f"{_name(column)} = ?")
        args.append(value)
    if where.success is not None:
        clauses.append("success = ?")
        args.append(int(where.success))
    if where.requested_tool is not None:
        text = where.requested_tool
        escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        clauses.append("request_tool_names LIKE ? ESCAPE '\\'")
        args.append(f"%{escaped}%")
    if where.tool_use is not None:
        clauses.append("tool_call_count > 0" if where.tool_use else "tool_call_count = 0")
    if where.owner is not None:
        clause, values = _owner_sql(where.owner)
        clauses.append(clause)
        args.extend(values)
    if where.present is not None:
        clauses.append(f"+{_name(where.present)} IS NOT NULL")
    return (f" WHERE {' AND '.join(clauses)}" if clauses else ""), args


def _owner_sql(owner: Owner) -> tuple[str, list[SqlValue]]:
    terms: list[str] = []
    args: list[SqlValue] = []
    if owner.agent_id:
        terms.append("agent_id = ?")
        args.append(owner.agent_id)
    for column, ids in (("route_id", owner.route_ids), ("service_id", owner.service_ids)):
        if ids:
            terms.append(f"{column} IN ({', '.join('?' for _ in ids)})")
            args.extend(ids)
    return (f"({' OR '.join(terms)})" if terms else "1 = 0"), args


def aggregate_sql(aggregate: Aggregate) -> tuple[str, list[SqlValue]]:
    """One aggregate's expression and its values."""
    how, column = aggregate.how, aggregate.column
    if how == "count":
        return "COUNT(*)", []
    if column is None:
        raise ValueError(f"a {how} aggregate needs a column")
    column = _name(column)
    if how == "sum":
        return f"COALESCE(SUM({column}), 0)", []
    if how == "count_false":
        return f"COUNT(*) - COALESCE(SUM({column}), 0)", []
    if how == "count_equal":
        return f"COALESCE(SUM(CASE WHEN {column} = ? THEN 1 ELSE 0 END), 0)", [aggregate.value]
    return f"AVG({column})", []


def measures_sql(measures: Measures) -> tuple[str, list[SqlValue]]:
    """``<aggregate> AS <name>, ...`` and the values they bind."""
    parts: list[str] = []
    args: list[SqlValue] = []
    for name, aggregate in measures:
        expression, values = aggregate_sql(aggregate)
        parts.append(f"{expression} AS {_name(name)}")
        args.extend(values)
    return ", ".join(parts), args


def totals(table: str, measures: Measures, where: Filter, *, span: bool = False) -> Statement:
    """One row: the measures over every matching row (then the first and last ``started_at``
    with ``span``)."""
    select, args = measures_sql(measures)
    if span:
        select += ", MIN(started_at) AS first_ms, MAX(started_at) AS last_ms"
    condition, values = where_sql(where)
    return f"SELECT {select} FROM {_name(table)}{condition}", [*args, *values]


def rows(table: str, where: Filter, limit: int) -> Statement:
    """The matching rows, every column, newest first."""
    condition, values = where_sql(where)
    return (
        f"SELECT * FROM {_name(table)}{condition} ORDER BY started_at DESC LIMIT ?",
        [*values, limit],
    )


def series(
    table: str, measures: Measures, where: Filter, width_ms: int, group: str | None, limit: int
) -> Statement:
    """``bucket_ms[, group_value], <measures>`` per time bucket (and group), ascending."""
    select, args = measures_sql(measures)
    group_sql = f", +{_name(group)} AS group_value" if group else ""
    keys = "1, 2" if group else "1"
    condition, values = where_sql(where)
    return (
        f"SELECT (started_at / ?) * ? AS bucket_ms{group_sql}, {select} "
        f"FROM {_name(table)}{condition} GROUP BY {keys} ORDER BY {keys} LIMIT ?",
        [width_ms, width_ms, *args, *values, limit],
    )


def groups(
    table: str, measures: Measures, where: Filter, group: str, order: str, limit: int
) -> Statement:
    """``group_value, <measures>`` per group, largest ``order`` (a measure) first."""
    _ordered(measures, order)
    select, args = measures_sql(measures)
    condition, values = where_sql(where)
    return (
        f"SELECT +{_name(group)} AS group_value, {select} FROM {_name(table)}{condition} "
        f"GROUP BY 1 ORDER BY {order} DESC, 1 ASC LIMIT ?",
        [*args, *values, limit],
    )


def _ordered(measures: Measures, order: str) -> None:
    if order not in {name for name, _ in measures}:
        raise ValueError(f"cannot order by {order!r}: not a measure of this read")


def _column_sql(name: str, source: Source) -> tuple[str, list[SqlValue]]:
    name = _name(name)
    if source is None:
        return f"NULL AS {name}", []
    if isinstance(source, Constant):
        return f"? AS {name}", [source.value]
    if isinstance(source, tuple):
        return f"COALESCE({', '.join(_name(s) for s in source)}) AS {name}", []
    return (name if source == name else f"{_name(source)} AS {name}"), []


def union_rows(
    parts: Sequence[Part], *, newest_first: bool, limit: int, derived: bool = True
) -> Statement:
    """The projected rows of several tables as one list by ``started_at``: each table's first
    ``limit`` (its index serves them), then the first ``limit`` of those. Each table's share is
    a derived table (SQLite has no parenthesized SELECT in a compound one) or, without
    ``derived`` (PostgreSQL, where a derived table's NULL column is text and then matches no
    other type), a parenthesized SELECT."""
    order = "started_at DESC" if newest_first else "started_at"
    selects: list[str] = []
    args: list[SqlValue] = []
    for part in parts:
        columns: list[str] = []
        for name, source in part.columns:
            column, values = _column_sql(name, source)
            columns.append(column)
            args.extend(values)
        condition, values = where_sql(part.where)
        select = (
            f"SELECT {', '.join(columns)} FROM {_name(part.table)}{condition} "
            f"ORDER BY {order} LIMIT ?"
        )
        nested = derived or len(parts) == 1  # one SELECT alone: a single ORDER BY then
        selects.append(f"SELECT * FROM ({select}) AS part" if nested else f"({select})")
        args += [*values, limit]
    return " UNION ALL ".join(selects) + f" ORDER BY {order} LIMIT ?", [*args, limit]


def _partials(index: int, aggregate: Aggregate) -> tuple[list[str], str]:
    """An aggregate split for a union: the per-table expressions (named ``m<index>_<j>``) and
    how the outer query folds them."""
    if aggregate.how == "avg":
        column = _name(aggregate.column or "")
        return (
            [f"SUM({column}) AS m{index}_0", f"COUNT({column}) AS m{index}_1"],
            f"CAST(SUM(m{index}_0) AS DOUBLE PRECISION) / NULLIF(SUM(m{index}_1), 0)",
        )
    expression, _ = aggregate_sql(aggregate)
    return [f"{expression} AS m{index}_0"], f"SUM(m{index}_0)"


def union_groups(
    parts: Sequence[Part], measures: Measures, group: str, order: str, limit: int
) -> Statement:
    """``group_value, <measures>`` per group over several tables (each grouped on its own,
    then folded), largest ``order`` first."""
    _ordered(measures, order)
    inner: list[str] = []
    outer: list[str] = []
    args: list[SqlValue] = []
    for i, (name, aggregate) in enumerate(measures):
        expressions, fold = _partials(i, aggregate)
        inner += expressions
        outer.append(f"{fold} AS {_name(name)}")
        if aggregate.how == "count_equal":
            args.append(aggregate.value)
    selects: list[str] = []
    values: list[SqlValue] = []
    for part in parts:
        condition, where_values = where_sql(part.where)
        selects.append(
            f"SELECT +{_name(group)} AS group_value, {', '.join(inner)} "
            f"FROM {_name(part.table)}{condition} GROUP BY 1"
        )
        values += [*args, *where_values]
    return (
        f"SELECT group_value, {', '.join(outer)} FROM ({' UNION ALL '.join(selects)}) AS parts "
        f"GROUP BY 1 ORDER BY {order} DESC, 1 ASC LIMIT ?",
        [*values, limit],
    )


# -------------------------------------------------------------------------------- writing

CHUNK_ROWS = (64, 16, 4, 1)
"""The row counts a multi-row INSERT is built for. SQLite's statement cache keeps one prepared
statement per SQL text, so a text per row count (1..256) held up to 128 large statements: about
22 MiB more peak memory under load (scripts/bench). Four shapes per table keep the cache small."""


@lru_cache(maxsize=64)
def insert(
    table: str, columns: tuple[str, ...], rows: int = 1, *, skip_existing: bool = False
) -> str:
    """``INSERT INTO <table> (<columns>) VALUES (?, ...), ...`` for ``rows`` rows; with
    ``skip_existing`` a row whose ``event_id`` the table holds already is left out (the usage
    spool's replay, agw/usage/spool.py), on SQLite and PostgreSQL alike."""
    one = "(" + ", ".join("?" * len(columns)) + ")"
    names = ", ".join(_name(c) for c in columns)
    text = f"INSERT INTO {_name(table)} ({names}) VALUES " + ", ".join([one] * rows)
    return text + " ON CONFLICT (event_id) DO NOTHING" if skip_existing else text


def delete_before(table: str, cutoff_ms: int) -> Statement:
    """The rows that started before ``cutoff_ms``."""
    return f"DELETE FROM {_name(table)} WHERE started_at < ?", [cutoff_ms]
