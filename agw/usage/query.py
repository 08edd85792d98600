"""The metrics API's queries as typed values: the raw query parameters of an admin request
(strings) checked and turned into what to read (reference §7.3).

Each endpoint has its query class; its ``parse`` validates the parameters and answers the
tables, :class:`~agw.store.usage_sql.Filter` s, groups and limits to read, which
:mod:`agw.usage.answers` hands to the store (:mod:`agw.store.usage_repo`). The measures, the
filters and the group-by columns each kind accepts are the catalog's
(:mod:`agw.usage.measures`).

Shared rules:

- ``from``/``to`` are RFC 3339 instants, inclusive bounds on ``started_at``;
- ``limit`` is an integer in 1..1000 (default 100);
- a parameter this endpoint does not know is an error (a typo must not silently widen the
  query); an empty value is the same as no value;
- a filter on the ``group_by`` column is ignored (reference §7.3);
- an :class:`Attribution` (the per-agent reads of reference §5.10) adds ``agent_id = X OR
  route_id IN (...)`` (plus ``OR service_id IN (...)`` on ACP rows); an empty one matches
  nothing.

Wrong parameters raise :class:`InvalidParameter` (400 ``invalid_parameter``); an unknown kind
:class:`~agw.errors.NotFound`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from agw.errors import InvalidRequest, NotFound
from agw.store.usage_sql import Constant, Filter, Owner, Part, Projection
from agw.usage.measures import ACP, COMMON_ORDER, KINDS, LLM, MCP, Kind

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
SESSION_LIMIT = 1000
MAX_BUCKETS = 10_000
MIN_BUCKET_MS = 1000
DEFAULT_BUCKET = "hour"


class InvalidParameter(InvalidRequest):
    """A query parameter the metrics API cannot use: 400 ``invalid_parameter``."""

    code = "invalid_parameter"


@dataclass(frozen=True)
class Attribution:
    """The per-agent read filter of reference §5.10."""

    agent_id: str
    route_ids: tuple[str, ...] = ()  # all the agent's routes (llm, mcp, acp)
    acp_service_ids: tuple[str, ...] = ()  # matched on acp rows only

    def owner(self, kind: Kind) -> Owner:
        """The store's filter for the rows of ``kind``."""
        services = self.acp_service_ids if kind is ACP else ()
        return Owner(self.agent_id, self.route_ids, services)


def kind_named(name: str) -> Kind:
    found = KINDS.get(name)
    if found is None:
        raise NotFound(f'unknown usage kind "{name}"; use llm, mcp, acp or a2a')
    return found


# /admin/metrics/mcp/tools/summary and /admin/metrics/acp/summary
TOOLS_SUMMARY_FILTERS = ("route_id", "service_id", "session_id", "agent_id", "user_id", "org_id")
ACP_SUMMARY_FILTERS = (
    "route_id",
    "route_protocol",
    "service_id",
    "agent_type",
    "operation",
    "session_id",
    "agent_id",
    "user_id",
    "org_id",
)
# /admin/metrics/interactions
INTERACTION_FILTERS = (
    "route_kind",
    "route_protocol",
    "route_id",
    "virtual_key_id",
    "user_id",
    "org_id",
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
    "user_id",
    "org_id",
    "session_id",
    "agent_id",
)
INTERACTION_ORDER_BY = COMMON_ORDER
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
    "user_id",
    "org_id",
)
_TIME = ("from", "to")


def interaction_columns(kind: Kind) -> Projection:
    """An interaction's columns from a row of ``kind``: the common ones, then ``service_id,
    session_id, operation, tool_name, upstream_model, input_tokens, output_tokens`` (NULL
    where its table has none)."""
    llm = kind is LLM
    return (
        *((name, name) for name in _INTERACTION_COMMON),
        ("service_id", None if llm else "service_id"),
        ("session_id", "session_id"),
        ("operation", kind.operation),
        ("tool_name", "tool_name" if kind is MCP else None),
        ("upstream_model", "upstream_model" if llm else None),
        ("input_tokens", "input_tokens" if llm else None),
        ("output_tokens", "output_tokens" if llm else None),
    )


def timeline_columns(kind: Kind) -> Projection:
    """A session timeline item's columns from a row of ``kind``."""
    llm = kind is LLM
    return (
        ("kind", Constant(kind.name)),
        ("started_at", "started_at"),
        ("route_id", "route_id"),
        ("model", ("upstream_model", "logical_model") if llm else None),
        ("tool", "tool_name" if kind is MCP else None),
        ("service_id", None if llm else "service_id"),
        ("input_tokens", "input_tokens" if llm else None),
        ("output_tokens", "output_tokens" if llm else None),
        ("operation", kind.operation),
        *(
            (name, name)
            for name in ("status_code", "success", "error_type", "latency_ms", "trace_id")
        ),
        ("event_id", "event_id"),
    )


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

    def choice(self, name: str, allowed: Sequence[str], default: str) -> str:
        value = self.get(name)
        if value is None:
            return default
        if value not in allowed:
            raise InvalidParameter(f'unsupported {name} "{value}"; use one of: {_quoted(allowed)}')
        return value

    def where(self, names: Iterable[str], skip: str | None = None) -> Filter:
        """The time range, the equalities on ``names`` (but ``skip``, the grouped column) and
        ``success``."""
        start, end = self.time_range()
        equals = tuple(
            (name, value)
            for name in names
            if (value := self.get(name)) is not None and name != skip
        )
        return Filter(start, end, equals, self.boolean("success"))


# --------------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class SummaryQuery:
    """``/admin/metrics``: every kind's measures over the rows in from/to."""

    where: Filter

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> SummaryQuery:
        return cls(Params(params, _TIME).where(()))


@dataclass(frozen=True)
class EventsQuery:
    """``/admin/metrics/{kind}/events``: the newest rows."""

    kind: Kind
    where: Filter
    limit: int

    @classmethod
    def parse(
        cls, kind: str, params: Mapping[str, str], attribution: Attribution | None
    ) -> EventsQuery:
        k = kind_named(kind)
        p = Params(params, (*k.event_filters, *k.extra_event_params, "success", "limit", *_TIME))
        where = replace(
            p.where(k.event_filters),
            requested_tool=p.get("request_tool_name"),
            tool_use=p.boolean("has_tool_use"),
            owner=attribution.owner(k) if attribution else None,
        )
        return cls(k, where, p.limit())


@dataclass(frozen=True)
class SeriesQuery:
    """``/admin/metrics/{kind}/timeseries``: the measures per bucket (and group)."""

    kind: Kind
    where: Filter
    bucket: str
    width_ms: int
    group: str | None

    @classmethod
    def parse(
        cls, kind: str, params: Mapping[str, str], attribution: Attribution | None
    ) -> SeriesQuery:
        k = kind_named(kind)
        p = Params(params, (*k.series_filters, "success", "bucket", "group_by", *_TIME))
        bucket = p.get("bucket") or DEFAULT_BUCKET
        width = parse_bucket(bucket)
        if width is None:
            raise InvalidParameter(
                f'invalid bucket "{bucket}"; use minute, hour, day or a duration of at least '
                f"1s like 30s, 5m, 3h, 1d, 1.5d"
            )
        group = p.choice("group_by", k.group_by, "") or None
        start, end = p.time_range()
        if start is not None and end is not None and (end // width - start // width) >= MAX_BUCKETS:
            raise too_many_buckets()
        where = _owned(p.where(k.series_filters, group), attribution, k)
        return cls(k, where, bucket, width, group)


@dataclass(frozen=True)
class BreakdownQuery:
    """``/admin/metrics/{kind}/breakdown`` and the two summaries: the measures per group."""

    kind: Kind
    where: Filter
    group: str
    order: str
    limit: int

    @classmethod
    def parse(
        cls, kind: str, params: Mapping[str, str], attribution: Attribution | None
    ) -> BreakdownQuery:
        k = kind_named(kind)
        return cls._parse(k, params, k.series_filters, k.default_group_by, attribution)

    @classmethod
    def tools_summary(
        cls, params: Mapping[str, str], attribution: Attribution | None
    ) -> BreakdownQuery:
        """The MCP breakdown by ``tool_name`` of the rows that name a tool."""
        return cls._parse(
            MCP, params, TOOLS_SUMMARY_FILTERS, "tool_name", attribution, fixed_group=True
        )

    @classmethod
    def acp_summary(
        cls, params: Mapping[str, str], attribution: Attribution | None
    ) -> BreakdownQuery:
        """The ACP breakdown (``group_by`` default ``operation``) with the summary's filters."""
        return cls._parse(ACP, params, ACP_SUMMARY_FILTERS, "operation", attribution)

    @classmethod
    def _parse(
        cls,
        k: Kind,
        params: Mapping[str, str],
        filters: tuple[str, ...],
        default_group: str,
        attribution: Attribution | None,
        *,
        fixed_group: bool = False,
    ) -> BreakdownQuery:
        accepted = (*filters, "success", "order_by", "limit", *_TIME)
        p = Params(params, accepted if fixed_group else (*accepted, "group_by"))
        group = default_group if fixed_group else p.choice("group_by", k.group_by, default_group)
        order = p.choice("order_by", k.order_by, "request_count")
        limit = p.limit()
        where = _owned(p.where(filters, group), attribution, k)
        if fixed_group:
            where = replace(where, present=group)
        return cls(k, where, group, order, limit)


@dataclass(frozen=True)
class InteractionsQuery:
    """``/admin/metrics/interactions`` (rows) and ``.../summary`` (``group`` set): the four
    tables as one; ``parts`` leaves out the tables that cannot match."""

    parts: tuple[Part, ...]
    limit: int
    group: str | None = None
    order: str = "request_count"

    @classmethod
    def parse(cls, params: Mapping[str, str], attribution: Attribution | None) -> InteractionsQuery:
        p = Params(params, (*INTERACTION_FILTERS, "success", "limit", *_TIME))
        limit = p.limit()
        return cls(_interaction_parts(p, attribution, None, projected=True), limit)

    @classmethod
    def parse_summary(
        cls, params: Mapping[str, str], attribution: Attribution | None
    ) -> InteractionsQuery:
        p = Params(
            params, (*INTERACTION_FILTERS, "success", "group_by", "order_by", "limit", *_TIME)
        )
        group = p.choice("group_by", INTERACTION_GROUP_BY, "route_kind")
        order = p.choice("order_by", INTERACTION_ORDER_BY, "request_count")
        limit = p.limit()
        return cls(_interaction_parts(p, attribution, group, projected=False), limit, group, order)


@dataclass(frozen=True)
class SessionQuery:
    """``/admin/metrics/sessions/{id}``: one agent session across the usage tables."""

    session_id: str
    where: Filter
    limit: int

    @classmethod
    def parse(cls, session_id: str, params: Mapping[str, str]) -> SessionQuery:
        p = Params(params, ("limit", *_TIME))
        limit = p.limit(SESSION_LIMIT, SESSION_LIMIT)
        start, end = p.time_range()
        return cls(session_id, Filter(start, end, (("session_id", session_id),)), limit)

    def parts(self) -> tuple[Part, ...]:
        return tuple(Part(k.table, self.where, timeline_columns(k)) for k in KINDS.values())


def too_many_buckets() -> InvalidParameter:
    return InvalidParameter(
        f"too many buckets: a timeseries answers at most {MAX_BUCKETS} points (buckets times "
        f"groups); narrow from/to, widen bucket, or filter"
    )


def _owned(where: Filter, attribution: Attribution | None, kind: Kind) -> Filter:
    return where if attribution is None else replace(where, owner=attribution.owner(kind))


def _interaction_parts(
    p: Params, attribution: Attribution | None, skip: str | None, *, projected: bool
) -> tuple[Part, ...]:
    """Per table, its conditions; tables that cannot match (another route_kind, a service_id
    filter on LLM rows, which have none) are left out."""
    start, end = p.time_range()
    success = p.boolean("success")
    depth: int | None = None
    text = p.get("agent_depth")
    if text is not None and skip != "agent_depth":
        try:
            depth = int(text)
        except ValueError:
            raise InvalidParameter("agent_depth must be an integer") from None
    equals: list[tuple[str, str | int]] = []
    for name in INTERACTION_FILTERS:
        value = depth if name == "agent_depth" else p.get(name)
        if value is not None and name != skip:
            equals.append((name, value))
    base = Filter(start, end, tuple(equals), success)
    out = []
    for k in KINDS.values():
        route_kind = p.get("route_kind")
        if route_kind is not None and skip != "route_kind" and route_kind != k.name:
            continue
        if k is LLM and p.get("service_id") is not None and skip != "service_id":
            continue
        projection = interaction_columns(k) if projected else ()
        out.append(Part(k.table, _owned(base, attribution, k), projection))
    return tuple(out)
