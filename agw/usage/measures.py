"""The metric catalog: what the metrics API serves (reference §7.3), read by the server
(:mod:`agw.usage.query`, :mod:`agw.usage.answers`, the admin API) and by ``agwctl``.

A :class:`Measure` is a number folded over usage rows: its name in every answer, its unit, how
it aggregates which column (an :class:`~agw.store.usage_sql.Aggregate`; the store writes the
SQL). A :class:`Kind` is one usage table and what the API may do with it: its measures in
answer order, the columns it filters and groups by, the measures it orders by.

This module imports no I/O: ``agwctl`` reads it (a client of the admin API, it never opens a
database). docs/observability.md lists the same catalog for people.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from agw.store.usage_sql import Aggregate, Measures


@dataclass(frozen=True, slots=True)
class Measure:
    """One number the metrics API answers."""

    name: str
    unit: str  # requests, tokens, calls, turns, ms, usd
    aggregate: Aggregate
    about: str
    headline: bool = True
    """Shown where the kinds share one table (``agwctl gateway metrics summary``);
    a detail measure is answered, and charted on request, but not shown there."""

    @property
    def average(self) -> bool:
        """An average: merged across buckets or tables weighted by request count, not added."""
        return self.aggregate.how == "avg"


REQUEST_COUNT = Measure("request_count", "requests", Aggregate("count"), "requests")
SUCCESS_COUNT = Measure(
    "success_count", "requests", Aggregate("sum", "success"), "requests that succeeded"
)
FAILURE_COUNT = Measure(
    "failure_count", "requests", Aggregate("count_false", "success"), "requests that failed"
)
AVG_LATENCY = Measure(
    "avg_latency_ms", "ms", Aggregate("avg", "latency_ms"), "mean latency (one decimal)"
)
INPUT_TOKENS = Measure(
    "input_tokens", "tokens", Aggregate("sum", "input_tokens"), "prompt tokens, cached included"
)
OUTPUT_TOKENS = Measure(
    "output_tokens", "tokens", Aggregate("sum", "output_tokens"), "completion tokens"
)
TOTAL_TOKENS = Measure(
    "total_tokens", "tokens", Aggregate("sum", "total_tokens"), "input plus output tokens"
)
CACHED_INPUT_TOKENS = Measure(
    "cached_input_tokens",
    "tokens",
    Aggregate("sum", "cached_input_tokens"),
    "input tokens read from the provider's prompt cache",
    headline=False,
)
REASONING_TOKENS = Measure(
    "reasoning_tokens",
    "tokens",
    Aggregate("sum", "reasoning_tokens"),
    "output tokens spent reasoning",
    headline=False,
)
COST_USD = Measure(
    "cost_usd",
    "usd",
    Aggregate("sum", "cost_usd"),
    "USD at the models' and MCP tools' prices (unpriced calls count 0; docs/limits.md)",
    headline=False,
)
TOOLS_CALL_COUNT = Measure(
    "tools_call_count",
    "calls",
    Aggregate("count_equal", "method", "tools/call"),
    "tools/call requests",
)
TURN_COUNT = Measure(
    "turn_count", "turns", Aggregate("count_equal", "operation", "turn"), "prompt turns"
)

COMMON: tuple[Measure, ...] = (REQUEST_COUNT, SUCCESS_COUNT, FAILURE_COUNT, AVG_LATENCY)
"""The measures of every kind, and of the interactions across the planes."""
COMMON_ORDER = tuple(m.name for m in COMMON)
"""What every breakdown may order by."""


@dataclass(frozen=True)
class Kind:
    """One usage table and what the metrics API may do with it."""

    name: str
    table: str
    measures: tuple[Measure, ...]  # in answer order
    event_filters: tuple[str, ...]  # equality filters of /events (besides success, ...)
    series_filters: tuple[str, ...]  # equality filters of /timeseries and /breakdown
    group_by: tuple[str, ...]
    default_group_by: str
    order_by: tuple[str, ...]
    chart_measure: str  # what ``agwctl ... timeseries`` charts without --measure
    session_totals: tuple[str, ...]  # the measures of a session's totals, in answer order
    booleans: tuple[str, ...]  # 0/1 columns answered as JSON booleans
    json_columns: tuple[str, ...]  # JSON text columns answered decoded
    operation: str  # the column that is the interaction's operation
    extra_event_params: tuple[str, ...] = field(default=())  # non-equality /events params

    def __post_init__(self) -> None:
        names = self.measure_names
        for chosen in (*self.order_by, self.chart_measure, *self.session_totals):
            if chosen not in names:
                raise ValueError(f"{self.name}: {chosen} is not one of its measures")

    @property
    def measure_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.measures)

    def aggregates(self, names: Sequence[str] | None = None) -> Measures:
        """(name, aggregate) of the kind's measures (or of ``names``), for the store."""
        chosen = self.measures if names is None else [self.measure(n) for n in names]
        return tuple((m.name, m.aggregate) for m in chosen)

    def measure(self, name: str) -> Measure:
        return next(m for m in self.measures if m.name == name)


LLM = Kind(
    name="llm",
    table="llm_usage_events",
    measures=(
        REQUEST_COUNT,
        SUCCESS_COUNT,
        FAILURE_COUNT,
        INPUT_TOKENS,
        OUTPUT_TOKENS,
        TOTAL_TOKENS,
        CACHED_INPUT_TOKENS,
        REASONING_TOKENS,
        COST_USD,
        AVG_LATENCY,
    ),
    event_filters=(
        "route_id",
        "provider_id",
        "virtual_key_id",
        "user_id",
        "org_id",
        "logical_model",
        "upstream_model",
        "llm_api",
        "api_operation",
        "session_id",
        "agent_id",
        "limit_id",
        "limit_action",
    ),
    series_filters=(
        "route_id",
        "provider_id",
        "virtual_key_id",
        "user_id",
        "org_id",
        "upstream_model",
        "llm_api",
        "session_id",
        "agent_id",
        "limit_id",
        "limit_action",
    ),
    group_by=(
        "route_id",
        "provider_id",
        "virtual_key_id",
        "user_id",
        "org_id",
        "logical_model",
        "upstream_model",
        "llm_api",
        "api_operation",
        "credential_source",
        "session_id",
        "agent_id",
        "stream",
        "limit_id",
        "limit_action",
    ),
    default_group_by="route_id",
    order_by=(*COMMON_ORDER, "total_tokens", "input_tokens", "output_tokens", "cost_usd"),
    chart_measure="total_tokens",
    session_totals=(
        "request_count",
        "failure_count",
        "input_tokens",
        "output_tokens",
        "total_tokens",
    ),
    booleans=("success", "stream", "usage_finalized"),
    json_columns=("request_tool_names", "tool_names"),
    operation="api_operation",
    extra_event_params=("request_tool_name", "has_tool_use"),
)
MCP = Kind(
    name="mcp",
    table="mcp_usage_events",
    measures=(
        REQUEST_COUNT,
        SUCCESS_COUNT,
        FAILURE_COUNT,
        TOOLS_CALL_COUNT,
        COST_USD,
        AVG_LATENCY,
    ),
    event_filters=(
        "route_id",
        "service_id",
        "virtual_key_id",
        "user_id",
        "org_id",
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
        "limit_id",
        "limit_action",
    ),
    series_filters=(
        "route_id",
        "service_id",
        "virtual_key_id",
        "user_id",
        "org_id",
        "method",
        "tool_name",
        "result_status",
        "session_id",
        "agent_id",
        "limit_id",
        "limit_action",
    ),
    group_by=(
        "route_id",
        "service_id",
        "virtual_key_id",
        "user_id",
        "org_id",
        "method",
        "tool_name",
        "result_status",
        "session_id",
        "agent_id",
        "limit_id",
        "limit_action",
    ),
    default_group_by="tool_name",
    order_by=(*COMMON_ORDER, "tools_call_count", "cost_usd"),
    chart_measure="request_count",
    session_totals=("request_count", "failure_count", "tools_call_count"),
    booleans=("success", "cancelled"),
    json_columns=("tool_args_json",),
    operation="method",
)
ACP = Kind(
    name="acp",
    table="acp_usage_events",
    measures=(REQUEST_COUNT, TURN_COUNT, SUCCESS_COUNT, FAILURE_COUNT, AVG_LATENCY),
    event_filters=(
        "route_id",
        "route_protocol",
        "service_id",
        "virtual_key_id",
        "user_id",
        "org_id",
        "agent_type",
        "operation",
        "thread_id",
        "session_id",
        "agent_id",
        "limit_id",
        "limit_action",
    ),
    series_filters=(
        "route_id",
        "route_protocol",
        "service_id",
        "virtual_key_id",
        "user_id",
        "org_id",
        "agent_type",
        "operation",
        "result_status",
        "session_id",
        "agent_id",
        "limit_id",
        "limit_action",
    ),
    group_by=(
        "route_id",
        "route_protocol",
        "service_id",
        "virtual_key_id",
        "user_id",
        "org_id",
        "agent_type",
        "operation",
        "result_status",
        "session_id",
        "agent_id",
        "limit_id",
        "limit_action",
    ),
    default_group_by="operation",
    order_by=(*COMMON_ORDER, "turn_count"),
    chart_measure="request_count",
    session_totals=("request_count", "turn_count", "failure_count"),
    booleans=("success", "fresh_session"),
    json_columns=("event_counts_json", "usage_json"),
    operation="operation",
)
A2A = Kind(
    name="a2a",
    table="a2a_usage_events",
    measures=(REQUEST_COUNT, SUCCESS_COUNT, FAILURE_COUNT, AVG_LATENCY),
    event_filters=(
        "route_id",
        "service_id",
        "virtual_key_id",
        "user_id",
        "org_id",
        "method",
        "protocol_version",
        "binding",
        "task_id",
        "context_id",
        "task_state",
        "session_id",
        "agent_id",
        "limit_id",
        "limit_action",
    ),
    series_filters=(
        "route_id",
        "service_id",
        "virtual_key_id",
        "user_id",
        "org_id",
        "method",
        "protocol_version",
        "binding",
        "task_state",
        "session_id",
        "agent_id",
        "limit_id",
        "limit_action",
    ),
    group_by=(
        "route_id",
        "service_id",
        "virtual_key_id",
        "user_id",
        "org_id",
        "method",
        "protocol_version",
        "binding",
        "task_state",
        "stream",
        "session_id",
        "agent_id",
        "limit_id",
        "limit_action",
    ),
    default_group_by="method",
    order_by=COMMON_ORDER,
    chart_measure="request_count",
    session_totals=("request_count", "failure_count"),
    booleans=("success", "stream"),
    json_columns=(),
    operation="method",
)
KINDS: Mapping[str, Kind] = {k.name: k for k in (LLM, MCP, ACP, A2A)}

INTERACTION_MEASURES: Measures = tuple((m.name, m.aggregate) for m in COMMON)
"""The measures of ``/admin/metrics/interactions/summary`` (every usage table as one)."""


def _union(names: Sequence[Sequence[str]]) -> tuple[str, ...]:
    out: list[str] = []
    for group in names:
        out += [n for n in group if n not in out]
    return tuple(out)


def summary_measures() -> tuple[str, ...]:
    """The headline measures of the kinds, each once, averages last: the columns of a
    table with one row per kind."""
    measures = {m.name: m for k in KINDS.values() for m in k.measures}
    names = _union([[m.name for m in k.measures if m.headline] for k in KINDS.values()])
    return tuple(sorted(names, key=lambda n: measures[n].average))


def session_total_measures() -> tuple[str, ...]:
    """The measures of a session's totals, each once: the columns of its table per kind."""
    return _union([k.session_totals for k in KINDS.values()])


def is_average(name: str) -> bool:
    """Whether the measure ``name`` is an average (False for a measure this catalog lacks)."""
    return any(m.name == name and m.average for k in KINDS.values() for m in k.measures)
