"""The metrics API's reads over the three usage tables (reference §7.3), with no web framework.

:class:`MetricsQuery` takes the raw query parameters of an admin request (strings), validates
them and answers a JSON-ready ``dict``. Every query reads one connection, with bound values only;
the only names formatted into SQL are columns from the whitelists below. Filters are equalities
on indexed columns and a ``started_at`` range, so the ``(column, started_at)`` indexes of the
usage tables serve them. Grouped columns are written ``+column``: SQLite then picks its index
from the filters (a ``from`` window, a key) instead of walking the whole index of the grouped
column to save a sort, which on a large table costs far more than the sort.

Shared rules:

- ``from``/``to`` are RFC 3339 instants, inclusive bounds on ``started_at``;
- ``limit`` is an integer in 1..1000 (default 100);
- a parameter this endpoint does not know is an error (a typo must not silently widen the
  query); an empty value is the same as no value;
- a filter on the ``group_by`` column is ignored (reference §7.3);
- an :class:`Attribution` (the per-agent reads of reference §5.10) adds ``agent_id = X OR
  route_id IN (...)`` (plus ``OR service_id IN (...)`` on ACP rows); an empty one matches
  nothing.

Wrong parameters raise :class:`InvalidParameter` (400 ``invalid_parameter``). Without a
database (``MetricsQuery(None)``) every endpoint answers its empty shape, after validating.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from agw.clock import rfc3339_ms
from agw.errors import InvalidRequest, NotFound
from agw.store.db import Database

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SESSION_LIMIT = 1000
MAX_BUCKETS = 10_000
MIN_BUCKET_MS = 1000
DEFAULT_BUCKET = "hour"

Json = dict[str, Any]


class InvalidParameter(InvalidRequest):
    """A query parameter the metrics API cannot use: 400 ``invalid_parameter``."""

    code = "invalid_parameter"


@dataclass(frozen=True)
class Attribution:
    """The per-agent read filter of reference §5.10."""

    agent_id: str
    route_ids: tuple[str, ...] = ()  # all the agent's routes (llm, mcp, acp)
    acp_service_ids: tuple[str, ...] = ()  # matched on acp rows only


# ------------------------------------------------------------------------------- the kinds

_COMMON_MEASURES = (
    ("request_count", "COUNT(*)"),
    ("success_count", "COALESCE(SUM(success), 0)"),
    ("failure_count", "COUNT(*) - COALESCE(SUM(success), 0)"),
)
_LATENCY = ("avg_latency_ms", "AVG(latency_ms)")
_COMMON_ORDER = ("request_count", "success_count", "failure_count", "avg_latency_ms")


@dataclass(frozen=True)
class Kind:
    """One usage table and what the API may do with it."""

    name: str
    table: str
    event_filters: tuple[str, ...]  # equality filters of /events (besides success, ...)
    series_filters: tuple[str, ...]  # equality filters of /timeseries and /breakdown
    group_by: tuple[str, ...]
    default_group_by: str
    measures: tuple[tuple[str, str], ...]  # (name, SQL aggregate), in answer order
    order_by: tuple[str, ...]
    booleans: tuple[str, ...]  # 0/1 columns answered as JSON booleans
    json_columns: tuple[str, ...]  # JSON text columns answered decoded
    operation: str  # the column that is the interaction's operation
    extra_event_params: tuple[str, ...] = field(default=())  # non-equality /events params


LLM = Kind(
    name="llm",
    table="llm_usage_events",
    event_filters=(
        "route_id",
        "provider_id",
        "virtual_key_id",
        "logical_model",
        "upstream_model",
        "llm_api",
        "api_operation",
        "session_id",
        "agent_id",
    ),
    series_filters=(
        "route_id",
        "provider_id",
        "virtual_key_id",
        "upstream_model",
        "llm_api",
        "session_id",
        "agent_id",
    ),
    group_by=(
        "route_id",
        "provider_id",
        "virtual_key_id",
        "logical_model",
        "upstream_model",
        "llm_api",
        "api_operation",
        "credential_source",
        "session_id",
        "agent_id",
        "stream",
    ),
    default_group_by="route_id",
    measures=(
        *_COMMON_MEASURES,
        ("input_tokens", "COALESCE(SUM(input_tokens), 0)"),
        ("output_tokens", "COALESCE(SUM(output_tokens), 0)"),
        ("total_tokens", "COALESCE(SUM(total_tokens), 0)"),
        ("cached_input_tokens", "COALESCE(SUM(cached_input_tokens), 0)"),
        ("reasoning_tokens", "COALESCE(SUM(reasoning_tokens), 0)"),
        _LATENCY,
    ),
    order_by=(*_COMMON_ORDER, "total_tokens", "input_tokens", "output_tokens"),
    booleans=("success", "stream", "usage_finalized"),
    json_columns=("request_tool_names", "tool_names"),
    operation="api_operation",
    extra_event_params=("request_tool_name", "has_tool_use"),
)
MCP = Kind(
    name="mcp",
    table="mcp_usage_events",
    event_filters=(
        "route_id",
        "service_id",
        "virtual_key_id",
        "method",
        "tool_name",
        "resource_uri",
        "prompt_name",
        "result_status",
        "completion_ref_type",
        "completion_argument",
        "session_id",
        "agent_id",
        "mcp_session_id",
    ),
    series_filters=(
        "route_id",
        "service_id",
        "virtual_key_id",
        "method",
        "tool_name",
        "result_status",
        "session_id",
        "agent_id",
    ),
    group_by=(
        "route_id",
        "service_id",
        "virtual_key_id",
        "method",
        "tool_name",
        "result_status",
        "session_id",
        "agent_id",
    ),
    default_group_by="tool_name",
    measures=(
        *_COMMON_MEASURES,
        ("tools_call_count", "COALESCE(SUM(method = 'tools/call'), 0)"),
        _LATENCY,
    ),
    order_by=(*_COMMON_ORDER, "tools_call_count"),
    booleans=("success", "cancelled"),
    json_columns=("tool_args_json",),
    operation="method",
)
ACP = Kind(
    name="acp",
    table="acp_usage_events",
    event_filters=(
        "route_id",
        "route_protocol",
        "service_id",
        "virtual_key_id",
        "agent_type",
        "operation",
        "thread_id",
        "session_id",
        "agent_id",
    ),
    series_filters=(
        "route_id",
        "route_protocol",
        "service_id",
        "virtual_key_id",
        "agent_type",
        "operation",
        "result_status",
        "session_id",
        "agent_id",
    ),
    group_by=(
        "route_id",
        "route_protocol",
        "service_id",
        "virtual_key_id",
        "agent_type",
        "operation",
        "result_status",
        "session_id",
        "agent_id",
    ),
    default_group_by="operation",
    measures=(
        _COMMON_MEASURES[0],
        ("turn_count", "COALESCE(SUM(operation = 'turn'), 0)"),
        *_COMMON_MEASURES[1:],
        _LATENCY,
    ),
    order_by=(*_COMMON_ORDER, "turn_count"),
    booleans=("success", "fresh_session"),
    json_columns=("event_counts_json", "usage_json"),
    operation="operation",
)
KINDS: dict[str, Kind] = {k.name: k for k in (LLM, MCP, ACP)}

# /admin/metrics/mcp/tools/summary and /admin/metrics/acp/summary
TOOLS_SUMMARY_FILTERS = ("route_id", "service_id", "session_id", "agent_id")
ACP_SUMMARY_FILTERS = (
    "route_id",
    "route_protocol",
    "service_id",
    "agent_type",
    "operation",
    "session_id",
    "agent_id",
)

# /admin/metrics/interactions: the columns of the UNION, per table (NULL where it has none)
_INTERACTION_COMMON = (
    "event_id",
    "trace_id",
    "span_id",
    "parent_span_id",
    "agent_depth",
    "started_at",
    "finished_at",
    "route_id",
    "route_kind",
    "route_protocol",
    "virtual_key_id",
    "success",
    "status_code",
    "error_type",
    "latency_ms",
    "agent_id",
)
_INTERACTION_EXTRA: dict[str, tuple[str, ...]] = {
    #        service_id,   session_id,   operation,       tool_name,   upstream_model,
    #        input_tokens, output_tokens
    "llm": (
        "NULL",
        "session_id",
        "api_operation",
        "NULL",
        "upstream_model",
        "input_tokens",
        "output_tokens",
    ),
    "mcp": ("service_id", "session_id", "method", "tool_name", "NULL", "NULL", "NULL"),
    "acp": ("service_id", "session_id", "operation", "NULL", "NULL", "NULL", "NULL"),
}
_INTERACTION_EXTRA_NAMES = (
    "service_id",
    "session_id",
    "operation",
    "tool_name",
    "upstream_model",
    "input_tokens",
    "output_tokens",
)
INTERACTION_FILTERS = (
    "route_kind",
    "route_protocol",
    "route_id",
    "virtual_key_id",
    "trace_id",
    "parent_span_id",
    "agent_depth",
    "service_id",
    "session_id",
    "agent_id",
)
INTERACTION_GROUP_BY = (
    "route_kind",
    "route_protocol",
    "route_id",
    "virtual_key_id",
    "session_id",
    "agent_id",
)
INTERACTION_ORDER_BY = _COMMON_ORDER
_TIME = ("from", "to")


# ------------------------------------------------------------------------------ parameters

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|[+-]\d{2}:\d{2})$"
)
_NAMED_BUCKETS = {
    **dict.fromkeys(("minute", "minutes", "min", "m"), 60_000),
    **dict.fromkeys(("hour", "hours", "hr", "h"), 3_600_000),
    **dict.fromkeys(("day", "days", "d"), 86_400_000),
}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_MS = {"s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_rfc3339(text: str) -> int | None:
    """RFC 3339 (an offset is required; fractions beyond milliseconds are cut) as unix ms."""
    match = _RFC3339.match(text.strip())
    if match is None:
        return None
    year, month, day, hour, minute, second, fraction, offset = match.groups()
    try:
        moment = datetime(
            int(year), int(month), int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except ValueError:
        return None
    ms = int((moment - datetime(1970, 1, 1, tzinfo=UTC)).total_seconds()) * 1000
    ms += int((fraction or "0")[:3].ljust(3, "0"))
    if offset not in ("Z", "z"):
        sign = 1 if offset[0] == "+" else -1
        hours, minutes = int(offset[1:3]), int(offset[4:6])
        if hours > 23 or minutes > 59:
            return None
        ms -= sign * (hours * 60 + minutes) * 60_000
    return ms


def parse_bucket(text: str) -> int | None:
    """A bucket width in ms (``hour``, ``5m``, ``1.5d``, ...); None when it is not one."""
    named = _NAMED_BUCKETS.get(text.strip().lower())
    if named is not None:
        return named
    match = _DURATION.match(text.strip())
    if match is None:
        return None
    width = round(float(match.group(1)) * _UNIT_MS[match.group(2)])
    return width if width >= MIN_BUCKET_MS else None


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


class Params:
    """The query parameters of one request, checked against what its endpoint accepts."""

    def __init__(self, raw: Mapping[str, str], allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for name in raw:
            if name not in allowed:
                raise InvalidParameter(
                    f'unknown parameter "{name}"; this endpoint accepts: {_quoted(allowed)}'
                )
        self.values = {k: v.strip() for k, v in raw.items() if v.strip()}

    def get(self, name: str) -> str | None:
        return self.values.get(name)

    def limit(self, default: int = DEFAULT_LIMIT, maximum: int = MAX_LIMIT) -> int:
        text = self.get("limit")
        if text is None:
            return default
        try:
            value = int(text)
        except ValueError:
            value = 0
        if not 1 <= value <= maximum:
            raise InvalidParameter(f"limit must be an integer between 1 and {maximum}")
        return value

    def boolean(self, name: str) -> bool | None:
        text = self.get(name)
        if text is None:
            return None
        if text.lower() not in ("true", "false"):
            raise InvalidParameter(f"{name} must be true or false")
        return text.lower() == "true"

    def time_range(self) -> tuple[int | None, int | None]:
        bounds: list[int | None] = []
        for name in _TIME:
            text = self.get(name)
            value = None if text is None else parse_rfc3339(text)
            if text is not None and value is None:
                raise InvalidParameter(
                    f"{name} must be RFC3339 (like 2026-01-02T15:04:05Z or "
                    f"2026-01-02T15:04:05.000+02:00)"
                )
            bounds.append(value)
        start, end = bounds
        if start is not None and end is not None and start > end:
            raise InvalidParameter("from must not be after to")
        return start, end

    def choice(self, name: str, allowed: Sequence[str], default: str | None) -> str | None:
        value = self.get(name)
        if value is None:
            return default
        if value not in allowed:
            raise InvalidParameter(f'unsupported {name} "{value}"; use one of: {_quoted(allowed)}')
        return value


# ----------------------------------------------------------------------------------- SQL


class Where:
    """AND-ed conditions and their bound values."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[object] = []

    def add(self, clause: str, *args: object) -> None:
        self.clauses.append(clause)
        self.args.extend(args)

    def sql(self) -> str:
        return f" WHERE {' AND '.join(self.clauses)}" if self.clauses else ""

    def copy(self) -> Where:
        other = Where()
        other.clauses, other.args = list(self.clauses), list(self.args)
        return other


def _time_filter(where: Where, params: Params) -> None:
    start, end = params.time_range()
    if start is not None:
        where.add("started_at >= ?", start)
    if end is not None:
        where.add("started_at <= ?", end)


def _equalities(where: Where, params: Params, names: Iterable[str], skip: str | None) -> None:
    for name in names:
        value = params.get(name)
        if value is not None and name != skip:
            where.add(f"{name} = ?", value)


def _success(where: Where, params: Params) -> None:
    success = params.boolean("success")
    if success is not None:
        where.add("success = ?", int(success))


def _attribute(where: Where, attribution: Attribution | None, kind: str) -> None:
    if attribution is None:
        return
    terms: list[str] = []
    args: list[object] = []
    if attribution.agent_id:
        terms.append("agent_id = ?")
        args.append(attribution.agent_id)
    if attribution.route_ids:
        terms.append(f"route_id IN ({', '.join('?' for _ in attribution.route_ids)})")
        args.extend(attribution.route_ids)
    if kind == "acp" and attribution.acp_service_ids:
        ids = attribution.acp_service_ids
        terms.append(f"service_id IN ({', '.join('?' for _ in ids)})")
        args.extend(ids)
    where.add(f"({' OR '.join(terms)})" if terms else "0", *args)


def _measures_sql(kind: Kind) -> str:
    return ", ".join(f"{sql} AS {name}" for name, sql in kind.measures)


def _measure_values(kind: Kind, row: Sequence[Any], offset: int) -> Json:
    out: Json = {}
    for i, (name, _) in enumerate(kind.measures):
        value = row[offset + i]
        if name == "avg_latency_ms":
            value = None if value is None else round(float(value), 1)
        out[name] = value
    return out


def _group_value(column: str, value: object) -> object:
    if column == "stream" and value is not None:
        return bool(value)
    return value


def _decoded(text: object) -> object:
    if not isinstance(text, str):
        return text
    try:
        return json.loads(text)
    except ValueError:  # a payload cut at 4096 bytes stays the text it is
        return text


def _event_row(names: Sequence[str], row: Sequence[Any], kind: Kind | None) -> Json:
    """A stored row for the API: RFC 3339 times (plus ``started_at_ms``), JSON booleans,
    decoded JSON columns."""
    out: Json = {}
    booleans = kind.booleans if kind else ("success",)
    json_columns = kind.json_columns if kind else ()
    for name, value in zip(names, row, strict=True):
        if name in ("started_at", "finished_at") and value is not None:
            if name == "started_at":
                out["started_at_ms"] = value
            value = rfc3339_ms(int(value))
        elif name in booleans and value is not None:
            value = bool(value)
        elif name in json_columns:
            value = _decoded(value)
        out[name] = value
    return out


# --------------------------------------------------------------------------------- queries


class MetricsQuery:
    """The metrics endpoints' answers, from the usage tables of ``db`` (none: empty shapes)."""

    def __init__(self, db: Database | None) -> None:
        self.db = db

    async def _rows(self, sql: str, args: Sequence[object]) -> tuple[list[str], list[Any]]:
        assert self.db is not None
        conn = await self.db.reader()
        async with conn.execute(sql, tuple(args)) as cur:
            rows = list(await cur.fetchall())
            names = [d[0] for d in cur.description]
        return names, rows

    @staticmethod
    def _kind(kind: str) -> Kind:
        found = KINDS.get(kind)
        if found is None:
            raise NotFound(f'unknown usage kind "{kind}"; use llm, mcp or acp')
        return found

    # -- summary

    async def summary(self, params: Mapping[str, str]) -> Json:
        """``{llm: {...}, mcp: {...}, acp: {...}}``: every measure over all rows in from/to
        (the admin app adds ``pipeline``)."""
        p = Params(params, _TIME)
        where = Where()
        _time_filter(where, p)
        out: Json = {}
        for kind in KINDS.values():
            if self.db is None:
                row: Sequence[Any] = [0] * (len(kind.measures) - 1) + [None]
            else:
                sql = f"SELECT {_measures_sql(kind)} FROM {kind.table}{where.sql()}"
                _, rows = await self._rows(sql, where.args)
                row = rows[0]
            out[kind.name] = _measure_values(kind, row, 0)
        return out

    # -- events

    async def events(
        self, kind: str, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> Json:
        """The newest rows first: ``{items: [row, ...], limit}``."""
        k = self._kind(kind)
        p = Params(params, (*k.event_filters, *k.extra_event_params, "success", "limit", *_TIME))
        where = Where()
        _time_filter(where, p)
        _equalities(where, p, k.event_filters, None)
        _success(where, p)
        tool = p.get("request_tool_name")
        if tool is not None:
            escaped = tool.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            where.add("request_tool_names LIKE ? ESCAPE '\\'", f"%{escaped}%")
        has_tool_use = p.boolean("has_tool_use")
        if has_tool_use is not None:
            where.add("tool_call_count > 0" if has_tool_use else "tool_call_count = 0")
        _attribute(where, attribution, k.name)
        limit = p.limit()
        if self.db is None:
            return {"items": [], "limit": limit}
        sql = f"SELECT * FROM {k.table}{where.sql()} ORDER BY started_at DESC LIMIT ?"
        names, rows = await self._rows(sql, [*where.args, limit])
        return {"items": [_event_row(names, r, k) for r in rows], "limit": limit}

    # -- timeseries

    async def timeseries(
        self, kind: str, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> Json:
        """``{bucket, bucket_width_ms, group_by?, items: [{bucket_ms, bucket, group_value?,
        ...measures}]}``, ascending by bucket (then group value)."""
        k = self._kind(kind)
        p = Params(params, (*k.series_filters, "success", "bucket", "group_by", *_TIME))
        bucket = p.get("bucket") or DEFAULT_BUCKET
        width = parse_bucket(bucket)
        if width is None:
            raise InvalidParameter(
                f'invalid bucket "{bucket}"; use minute, hour, day or a duration of at least '
                f"1s like 30s, 5m, 3h, 1d, 1.5d"
            )
        group = p.choice("group_by", k.group_by, None)
        where = Where()
        _time_filter(where, p)
        start, end = p.time_range()
        if start is not None and end is not None and (end // width - start // width) >= MAX_BUCKETS:
            raise _too_many_buckets()
        _equalities(where, p, k.series_filters, group)
        _success(where, p)
        _attribute(where, attribution, k.name)
        out: Json = {"bucket": bucket, "bucket_width_ms": width}
        if group is not None:
            out["group_by"] = group
        if self.db is None:
            return out | {"items": []}
        group_sql = f", +{group} AS group_value" if group else ""
        sql = (
            f"SELECT (started_at / ?) * ? AS bucket_ms{group_sql}, {_measures_sql(k)} "
            f"FROM {k.table}{where.sql()} GROUP BY 1{', 2' if group else ''} "
            f"ORDER BY 1{', 2' if group else ''} LIMIT ?"
        )
        _, rows = await self._rows(sql, [width, width, *where.args, MAX_BUCKETS + 1])
        if len(rows) > MAX_BUCKETS:
            raise _too_many_buckets()
        items = []
        for row in rows:
            item: Json = {"bucket_ms": row[0], "bucket": rfc3339_ms(row[0])}
            if group:
                item["group_value"] = _group_value(group, row[1])
            items.append(item | _measure_values(k, row, 2 if group else 1))
        return out | {"items": items}

    # -- breakdowns

    async def breakdown(
        self, kind: str, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> Json:
        """``{group_by, order_by, items: [{group_value, ...measures}], limit}``, descending by
        ``order_by`` (ties by group value)."""
        k = self._kind(kind)
        return await self._breakdown(k, params, k.series_filters, k.default_group_by, attribution)

    async def tools_summary(
        self, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> Json:
        """The MCP breakdown by ``tool_name`` of the rows that name a tool."""
        return await self._breakdown(
            MCP,
            params,
            TOOLS_SUMMARY_FILTERS,
            "tool_name",
            attribution,
            fixed_group=True,
            extra="+tool_name IS NOT NULL",
        )

    async def acp_summary(
        self, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> Json:
        """The ACP breakdown (``group_by`` default ``operation``) with the summary's filters."""
        return await self._breakdown(ACP, params, ACP_SUMMARY_FILTERS, "operation", attribution)

    async def _breakdown(
        self,
        k: Kind,
        params: Mapping[str, str],
        filters: tuple[str, ...],
        default_group: str,
        attribution: Attribution | None,
        *,
        fixed_group: bool = False,
        extra: str | None = None,
    ) -> Json:
        accepted = (*filters, "success", "order_by", "limit", *_TIME)
        p = Params(params, accepted if fixed_group else (*accepted, "group_by"))
        group = default_group if fixed_group else p.choice("group_by", k.group_by, default_group)
        assert group is not None
        order = p.choice("order_by", k.order_by, "request_count")
        limit = p.limit()
        where = Where()
        _time_filter(where, p)
        _equalities(where, p, filters, group)
        _success(where, p)
        _attribute(where, attribution, k.name)
        if extra:
            where.add(extra)
        out: Json = {"group_by": group, "order_by": order}
        if self.db is None:
            return out | {"items": [], "limit": limit}
        sql = (
            f"SELECT +{group} AS group_value, {_measures_sql(k)} FROM {k.table}{where.sql()} "
            f"GROUP BY 1 ORDER BY {order} DESC, 1 ASC LIMIT ?"
        )
        _, rows = await self._rows(sql, [*where.args, limit])
        items = [
            {"group_value": _group_value(group, r[0])} | _measure_values(k, r, 1) for r in rows
        ]
        return out | {"items": items, "limit": limit}

    # -- interactions (the three tables as one)

    def _interaction_wheres(
        self, p: Params, attribution: Attribution | None, skip: str | None
    ) -> list[tuple[Kind, Where]]:
        """Per table, its conditions; tables that cannot match (another route_kind, a
        service_id filter on LLM rows, which have none) are left out."""
        base = Where()
        _time_filter(base, p)
        _success(base, p)
        depth = p.get("agent_depth")
        if depth is not None and skip != "agent_depth":
            try:
                base.add("agent_depth = ?", int(depth))
            except ValueError:
                raise InvalidParameter("agent_depth must be an integer") from None
        names = [n for n in INTERACTION_FILTERS if n != "agent_depth"]
        _equalities(base, p, names, skip)
        out = []
        for k in KINDS.values():
            route_kind = p.get("route_kind")
            if route_kind is not None and skip != "route_kind" and route_kind != k.name:
                continue
            if k is LLM and p.get("service_id") is not None and skip != "service_id":
                continue
            where = base.copy()
            _attribute(where, attribution, k.name)
            out.append((k, where))
        return out

    async def interactions(
        self, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> Json:
        """The rows of all three tables, newest first: ``{items, limit}``; each item has the
        common columns and ``service_id, session_id, operation, tool_name, upstream_model,
        input_tokens, output_tokens`` (null where its table has none)."""
        p = Params(params, (*INTERACTION_FILTERS, "success", "limit", *_TIME))
        limit = p.limit()
        parts = self._interaction_wheres(p, attribution, None)
        if self.db is None or not parts:
            return {"items": [], "limit": limit}
        selects, args = [], []
        for k, where in parts:
            columns = ", ".join(
                [
                    *_INTERACTION_COMMON,
                    *(
                        f"{expr} AS {name}"
                        for expr, name in zip(
                            _INTERACTION_EXTRA[k.name], _INTERACTION_EXTRA_NAMES, strict=True
                        )
                    ),
                ]
            )
            selects.append(
                f"SELECT * FROM (SELECT {columns} FROM {k.table}{where.sql()} "
                f"ORDER BY started_at DESC LIMIT ?)"
            )
            args += [*where.args, limit]
        sql = " UNION ALL ".join(selects) + " ORDER BY started_at DESC LIMIT ?"
        names, rows = await self._rows(sql, [*args, limit])
        return {"items": [_event_row(names, r, None) for r in rows], "limit": limit}

    async def interactions_summary(
        self, params: Mapping[str, str], attribution: Attribution | None = None
    ) -> Json:
        """``{group_by, order_by, items: [{group_value, request_count, success_count,
        failure_count, avg_latency_ms}], limit}`` over all three tables."""
        p = Params(
            params, (*INTERACTION_FILTERS, "success", "group_by", "order_by", "limit", *_TIME)
        )
        group = p.choice("group_by", INTERACTION_GROUP_BY, "route_kind")
        assert group is not None
        order = p.choice("order_by", INTERACTION_ORDER_BY, "request_count")
        limit = p.limit()
        parts = self._interaction_wheres(p, attribution, group)
        out: Json = {"group_by": group, "order_by": order}
        if self.db is None or not parts:
            return out | {"items": [], "limit": limit}
        selects, args = [], []
        for k, where in parts:
            selects.append(
                f"SELECT +{group} AS g, COUNT(*) AS n, COALESCE(SUM(success), 0) AS s, "
                f"SUM(latency_ms) AS ls, COUNT(latency_ms) AS lc FROM {k.table}{where.sql()} "
                f"GROUP BY 1"
            )
            args += where.args
        sql = (
            "SELECT g, SUM(n) AS request_count, SUM(s) AS success_count, "
            "SUM(n) - SUM(s) AS failure_count, "
            "CAST(SUM(ls) AS REAL) / NULLIF(SUM(lc), 0) AS avg_latency_ms "
            f"FROM ({' UNION ALL '.join(selects)}) GROUP BY g "
            f"ORDER BY {order} DESC, g ASC LIMIT ?"
        )
        _, rows = await self._rows(sql, [*args, limit])
        items = [
            {
                "group_value": r[0],
                "request_count": r[1],
                "success_count": r[2],
                "failure_count": r[3],
                "avg_latency_ms": None if r[4] is None else round(float(r[4]), 1),
            }
            for r in rows
        ]
        return out | {"items": items, "limit": limit}

    # -- one agent session across the three planes

    async def session(self, session_id: str, params: Mapping[str, str]) -> Json:
        """The timeline of one agent session: ``{session_id, first_at, last_at, totals, items,
        limit}``, items ascending by ``started_at``; 404 when it has no rows (in from/to)."""
        p = Params(params, ("limit", *_TIME))
        limit = p.limit(SESSION_LIMIT, SESSION_LIMIT)
        where = Where()
        where.add("session_id = ?", session_id)
        _time_filter(where, p)
        missing = NotFound(f'session "{session_id}" has no usage events')
        if self.db is None:
            raise missing
        totals_sql = {
            "llm": "COUNT(*), COUNT(*) - COALESCE(SUM(success), 0), "
            "COALESCE(SUM(input_tokens), 0), COALESCE(SUM(output_tokens), 0), "
            "COALESCE(SUM(total_tokens), 0)",
            "mcp": "COUNT(*), COUNT(*) - COALESCE(SUM(success), 0), "
            "COALESCE(SUM(method = 'tools/call'), 0)",
            "acp": "COUNT(*), COALESCE(SUM(operation = 'turn'), 0), "
            "COUNT(*) - COALESCE(SUM(success), 0)",
        }
        totals_names = {
            "llm": (
                "request_count",
                "failure_count",
                "input_tokens",
                "output_tokens",
                "total_tokens",
            ),
            "mcp": ("request_count", "failure_count", "tools_call_count"),
            "acp": ("request_count", "turn_count", "failure_count"),
        }
        totals: Json = {}
        first: int | None = None
        last: int | None = None
        for k in KINDS.values():
            sql = (
                f"SELECT {totals_sql[k.name]}, MIN(started_at), MAX(started_at) "
                f"FROM {k.table}{where.sql()}"
            )
            _, rows = await self._rows(sql, where.args)
            row = rows[0]
            names = totals_names[k.name]
            totals[k.name] = dict(zip(names, row[: len(names)], strict=True))
            low, high = row[len(names)], row[len(names) + 1]
            if low is not None:
                first = low if first is None else min(first, low)
                last = high if last is None else max(last, high)
        if first is None or last is None:
            raise missing
        item_columns = {
            "llm": "COALESCE(upstream_model, logical_model), NULL, NULL, input_tokens, "
            "output_tokens, api_operation",
            "mcp": "NULL, tool_name, service_id, NULL, NULL, method",
            "acp": "NULL, NULL, service_id, NULL, NULL, operation",
        }
        selects, args = [], []
        for k in KINDS.values():
            selects.append(
                f"SELECT * FROM (SELECT '{k.name}', started_at, route_id, "
                f"{item_columns[k.name]}, status_code, success, error_type, latency_ms, "
                f"trace_id, event_id FROM {k.table}{where.sql()} ORDER BY started_at LIMIT ?)"
            )
            args += [*where.args, limit]
        sql = " UNION ALL ".join(selects) + " ORDER BY 2 LIMIT ?"
        _, rows = await self._rows(sql, [*args, limit])
        items = [_timeline_item(r) for r in rows]
        return {
            "session_id": session_id,
            "first_at": rfc3339_ms(first),
            "last_at": rfc3339_ms(last),
            "totals": totals,
            "items": items,
            "limit": limit,
        }


def _timeline_item(row: Sequence[Any]) -> Json:
    (kind, at, route_id, model, tool, service_id, tokens_in, tokens_out, operation) = row[:9]
    status_code, success, error_type, latency_ms, trace_id, event_id = row[9:]
    item: Json = {
        "at": rfc3339_ms(at),
        "at_ms": at,
        "kind": kind,
        "route_id": route_id,
        "operation": operation,
    }
    if kind == "llm":
        item["model"] = model
    if kind == "mcp":
        item["tool"] = tool
    if kind != "llm":
        item["service_id"] = service_id
    item |= {
        "status_code": status_code,
        "success": bool(success),
        "error_type": error_type,
        "latency_ms": latency_ms,
    }
    if kind == "llm":
        item["input_tokens"] = tokens_in
        item["output_tokens"] = tokens_out
    return item | {"trace_id": trace_id, "event_id": event_id}


def _too_many_buckets() -> InvalidParameter:
    return InvalidParameter(
        f"too many buckets: a timeseries answers at most {MAX_BUCKETS} points (buckets times "
        f"groups); narrow from/to, widen bucket, or filter"
    )
