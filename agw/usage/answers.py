"""The metrics API's answers (reference §7.3), with no web framework.

:class:`MetricsQuery` takes the raw query parameters of an admin request (strings), parses
them into a typed query (:mod:`agw.usage.query`), reads the rows from the store
(:mod:`agw.store.usage_repo`, on its read connection) and shapes them into a JSON-ready
``dict``: RFC 3339 times (plus the unix ms), JSON booleans, decoded JSON columns, averages to
one decimal. Without a database (``MetricsQuery(None)``) every endpoint answers its empty
shape, after validating.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

from agw.clock import rfc3339_ms
from agw.errors import NotFound
from agw.store import usage_repo
from agw.store.engine import Store
from agw.store.usage_sql import Row, SqlValue
from agw.types import JsonObj
from agw.usage.measures import COMMON, INTERACTION_MEASURES, KINDS, Kind, Measure
from agw.usage.query import (
    MAX_BUCKETS,
    Attribution,
    BreakdownQuery,
    EventsQuery,
    InteractionsQuery,
    SeriesQuery,
    SessionQuery,
    SummaryQuery,
    too_many_buckets,
)


class MetricsQuery:
    """The metrics endpoints' answers, from the usage tables of ``db`` (none: empty shapes)."""

    def __init__(self, db: Store | None) -> None:
        self.db = db

    async def summary(self, params: Mapping[str, str]) -> JsonObj:
        """``{llm: {...}, mcp: {...}, acp: {...}}``: every measure over all rows in from/to
        (the admin app adds ``pipeline``)."""
        q = SummaryQuery.parse(params)
        out: JsonObj = {}
        for kind in KINDS.values():
            if self.db is None:
                row: Row = tuple(None if m.average else 0 for m in kind.measures)
            else:
                row = await usage_repo.read_totals(self.db, kind.table, kind.aggregates(), q.where)
            out[kind.name] = measure_values(kind.measures, row, 0)
        return out

    async def events(
        self, kind: str, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> JsonObj:
        """The newest rows first: ``{items: [row, ...], limit}``."""
        q = EventsQuery.parse(kind, params, attribution)
        if self.db is None:
            return {"items": [], "limit": q.limit}
        names, rows = await usage_repo.read_rows(self.db, q.kind.table, q.where, q.limit)
        return {"items": [event_row(names, r, q.kind) for r in rows], "limit": q.limit}

    async def timeseries(
        self, kind: str, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> JsonObj:
        """``{bucket, bucket_width_ms, group_by?, items: [{bucket_ms, bucket, group_value?,
        ...measures}]}``, ascending by bucket (then group value)."""
        q = SeriesQuery.parse(kind, params, attribution)
        out: JsonObj = {"bucket": q.bucket, "bucket_width_ms": q.width_ms}
        if q.group is not None:
            out["group_by"] = q.group
        if self.db is None:
            return out | {"items": []}
        rows = await usage_repo.read_series(
            self.db,
            q.kind.table,
            q.kind.aggregates(),
            q.where,
            width_ms=q.width_ms,
            group=q.group,
            limit=MAX_BUCKETS + 1,
        )
        if len(rows) > MAX_BUCKETS:
            raise too_many_buckets()
        items = []
        for row in rows:
            at = _int(row[0])
            item: JsonObj = {"bucket_ms": at, "bucket": rfc3339_ms(at)}
            if q.group:
                item["group_value"] = group_value(q.group, row[1])
            items.append(item | measure_values(q.kind.measures, row, 2 if q.group else 1))
        return out | {"items": items}

    async def breakdown(
        self, kind: str, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> JsonObj:
        """``{group_by, order_by, items: [{group_value, ...measures}], limit}``, descending by
        ``order_by`` (ties by group value)."""
        return await self._breakdown(BreakdownQuery.parse(kind, params, attribution))

    async def tools_summary(
        self, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> JsonObj:
        """The MCP breakdown by ``tool_name`` of the rows that name a tool."""
        return await self._breakdown(BreakdownQuery.tools_summary(params, attribution))

    async def acp_summary(
        self, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> JsonObj:
        """The ACP breakdown (``group_by`` default ``operation``) with the summary's filters."""
        return await self._breakdown(BreakdownQuery.acp_summary(params, attribution))

    async def _breakdown(self, q: BreakdownQuery) -> JsonObj:
        out: JsonObj = {"group_by": q.group, "order_by": q.order}
        if self.db is None:
            return out | {"items": [], "limit": q.limit}
        rows = await usage_repo.read_groups(
            self.db,
            q.kind.table,
            q.kind.aggregates(),
            q.where,
            group=q.group,
            order=q.order,
            limit=q.limit,
        )
        items = [
            {"group_value": group_value(q.group, r[0])} | measure_values(q.kind.measures, r, 1)
            for r in rows
        ]
        return out | {"items": items, "limit": q.limit}

    async def interactions(
        self, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> JsonObj:
        """The rows of every usage table, newest first: ``{items, limit}``; each item has the
        common columns and ``service_id, session_id, operation, tool_name, upstream_model,
        input_tokens, output_tokens`` (null where its table has none)."""
        q = InteractionsQuery.parse(params, attribution)
        if self.db is None or not q.parts:
            return {"items": [], "limit": q.limit}
        names, rows = await usage_repo.read_union(
            self.db, q.parts, newest_first=True, limit=q.limit
        )
        return {"items": [event_row(names, r, None) for r in rows], "limit": q.limit}

    async def interactions_summary(
        self, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> JsonObj:
        """``{group_by, order_by, items: [{group_value, request_count, success_count,
        failure_count, avg_latency_ms}], limit}`` over every usage table."""
        q = InteractionsQuery.parse_summary(params, attribution)
        assert q.group is not None
        out: JsonObj = {"group_by": q.group, "order_by": q.order}
        if self.db is None or not q.parts:
            return out | {"items": [], "limit": q.limit}
        rows = await usage_repo.read_union_groups(
            self.db,
            q.parts,
            INTERACTION_MEASURES,
            group=q.group,
            order=q.order,
            limit=q.limit,
        )
        items = [{"group_value": r[0]} | measure_values(COMMON, r, 1) for r in rows]
        return out | {"items": items, "limit": q.limit}

    async def session(self, session_id: str, params: Mapping[str, str]) -> JsonObj:
        """The timeline of one agent session: ``{session_id, first_at, last_at, totals, items,
        limit}``, items ascending by ``started_at``; 404 when it has no rows (in from/to)."""
        q = SessionQuery.parse(session_id, params)
        missing = NotFound(f'session "{session_id}" has no usage events')
        if self.db is None:
            raise missing
        totals: JsonObj = {}
        first: int | None = None
        last: int | None = None
        for k in KINDS.values():
            row = await usage_repo.read_totals(
                self.db, k.table, k.aggregates(k.session_totals), q.where, span=True
            )
            totals[k.name] = measure_values(_session_measures(k), row, 0)
            low, high = row[len(k.session_totals)], row[len(k.session_totals) + 1]
            if low is not None and high is not None:
                first = _int(low) if first is None else min(first, _int(low))
                last = _int(high) if last is None else max(last, _int(high))
        if first is None or last is None:
            raise missing
        names, rows = await usage_repo.read_union(
            self.db, q.parts(), newest_first=False, limit=q.limit
        )
        return {
            "session_id": session_id,
            "first_at": rfc3339_ms(first),
            "last_at": rfc3339_ms(last),
            "totals": totals,
            "items": [timeline_item(dict(zip(names, r, strict=True))) for r in rows],
            "limit": q.limit,
        }


def _session_measures(kind: Kind) -> tuple[Measure, ...]:
    return tuple(kind.measure(name) for name in kind.session_totals)


# --------------------------------------------------------------------------------- shaping


def _int(value: SqlValue) -> int:
    if value is None:
        raise ValueError("NULL where a time was expected")
    return value if isinstance(value, int) else int(value)


def measure_values(measures: Sequence[Measure], row: Row, offset: int) -> JsonObj:
    """The measures from ``row[offset:]``, averages to one decimal."""
    out: JsonObj = {}
    for i, measure in enumerate(measures):
        value = row[offset + i]
        if measure.average and value is not None:
            value = round(float(value), 1)
        out[measure.name] = value
    return out


def group_value(column: str, value: SqlValue) -> object:
    if column == "stream" and value is not None:
        return bool(value)
    return value


def _decoded(text: SqlValue) -> object:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:  # a payload cut at 4096 bytes stays the text it is
        return text


def event_row(names: Sequence[str], row: Row, kind: Kind | None) -> JsonObj:
    """A stored row for the API: RFC 3339 times (plus ``started_at_ms``), JSON booleans,
    decoded JSON columns."""
    out: JsonObj = {}
    booleans = kind.booleans if kind else ("success",)
    json_columns = kind.json_columns if kind else ()
    for name, value in zip(names, row, strict=True):
        if name in ("started_at", "finished_at") and value is not None:
            if name == "started_at":
                out["started_at_ms"] = value
            out[name] = rfc3339_ms(_int(value))
        elif name in booleans and value is not None:
            out[name] = bool(value)
        elif name in json_columns:
            out[name] = _decoded(value)
        else:
            out[name] = value
    return out


def timeline_item(row: Mapping[str, SqlValue]) -> JsonObj:
    """One item of a session's timeline, from a row of
    :func:`~agw.usage.query.timeline_columns`: what its kind has, in the answer's order."""
    kind = row["kind"]
    at = _int(row["started_at"])
    item: JsonObj = {
        "at": rfc3339_ms(at),
        "at_ms": at,
        "kind": kind,
        "route_id": row["route_id"],
        "operation": row["operation"],
    }
    if kind == "llm":
        item["model"] = row["model"]
    if kind == "mcp":
        item["tool"] = row["tool"]
    if kind != "llm":
        item["service_id"] = row["service_id"]
    item |= {
        "status_code": row["status_code"],
        "success": bool(row["success"]),
        "error_type": row["error_type"],
        "latency_ms": row["latency_ms"],
    }
    if kind == "llm":
        item["input_tokens"] = row["input_tokens"]
        item["output_tokens"] = row["output_tokens"]
    return item | {"trace_id": row["trace_id"], "event_id": row["event_id"]}
