"""Usage metrics from the command line: ``agwctl gateway metrics
summary|events|timeseries|breakdown|interactions`` and ``agwctl gateway session show``.

Each command is one ``GET /admin/metrics...`` call. Options mirror the query parameters:
``--from``/``--to`` (RFC 3339, or a duration before now such as ``30m``, ``24h``, ``7d``),
``--limit``, ``--filter KEY=VALUE`` (repeatable; any filter the endpoint accepts),
``--success``/``--failure``, ``--group-by``, ``--order-by``, ``--bucket``. The gateway validates
them and its message is shown as it gave it (``agwctl: GET ...: 400 unsupported group_by ...``).

Output is a table (``-o json``: the admin API's answer, unchanged). ``timeseries`` also draws a
chart under its table, plain text that reads the same without colour and fits the terminal's
width: without ``--group-by`` one horizontal bar per bucket, with it one sparkline row per group
(every row on the same scale), so a day of token use per route or per key is one glance.

The chart is drawn by :mod:`agwctl.chart` (shared with ``agent usage``).

No ``from __future__ import annotations`` here: typer reads the ``Annotated`` parameters.
"""

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import typer

from agw.clock import rfc3339
from agwctl import render
from agwctl.chart import print_chart
from agwctl.client import CliError, segment
from agwctl.render import Column, dig
from agwctl.resources import admin, state

METRICS = "/admin/metrics"
SESSIONS = f"{METRICS}/sessions"


class Kind(StrEnum):
    llm = "llm"
    mcp = "mcp"
    acp = "acp"


# The measures of each kind, in the admin API's order (reference §7.3 plus cached/reasoning).
MEASURES: Mapping[str, tuple[str, ...]] = {
    "llm": (
        "request_count",
        "success_count",
        "failure_count",
        "input_tokens",
        "output_tokens",
        "total_tokens",
        "cached_input_tokens",
        "reasoning_tokens",
        "avg_latency_ms",
    ),
    "mcp": (
        "request_count",
        "success_count",
        "failure_count",
        "tools_call_count",
        "avg_latency_ms",
    ),
    "acp": ("request_count", "turn_count", "success_count", "failure_count", "avg_latency_ms"),
}
DEFAULT_MEASURE: Mapping[str, str] = {
    "llm": "total_tokens",
    "mcp": "request_count",
    "acp": "request_count",
}
# Parameters that have their own option: --filter may not set them.
_OWN_OPTIONS: Mapping[str, str] = {
    "from": "--from",
    "to": "--to",
    "limit": "--limit",
    "success": "--success/--failure",
    "group_by": "--group-by",
    "order_by": "--order-by",
    "bucket": "--bucket",
}

# ------------------------------------------------------------------------------------ options

KindOpt = Annotated[
    Kind, typer.Option("--kind", help="Which usage table: llm, mcp or acp.", case_sensitive=False)
]
FromOpt = Annotated[
    str | None,
    typer.Option(
        "--from",
        metavar="TIME",
        help="Only events that started at or after TIME: RFC 3339 (2025-01-31T08:00:00Z; a "
        "date alone is midnight UTC) or a duration before now (90s, 30m, 24h, 7d, 2w).",
        show_default=False,
    ),
]
ToOpt = Annotated[
    str | None,
    typer.Option(
        "--to",
        metavar="TIME",
        help="Only events that started at or before TIME (same forms as --from).",
        show_default=False,
    ),
]
LimitOpt = Annotated[
    int | None,
    typer.Option(
        "--limit",
        metavar="N",
        min=1,
        max=1000,
        help="At most this many rows (1-1000; the gateway's default is 100).",
        show_default=False,
    ),
]
FilterOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--filter",
        metavar="KEY=VALUE",
        help="Only rows whose KEY equals VALUE, e.g. route_id=openai or virtual_key_id=team-a "
        "(repeatable; the keys are the endpoint's filters, see docs/observability.md).",
        show_default=False,
    ),
]
SuccessOpt = Annotated[
    bool | None,
    typer.Option(
        "--success/--failure",
        help="Only successful / only failed requests (default: both).",
        show_default=False,
    ),
]


def _group_by_opt(help_text: str) -> Any:
    return typer.Option("--group-by", metavar="COLUMN", help=help_text, show_default=False)


# ------------------------------------------------------------------------------ query building

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*(s|m|h|d|w)$", re.IGNORECASE)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(value: str, option: str, now: datetime | None = None) -> str:
    """``--from``/``--to``: RFC 3339 (normalized to UTC) or ``<number><s|m|h|d|w>`` before now."""
    text = value.strip()
    match = _RELATIVE.match(text)
    if match:
        seconds = float(match.group(1)) * _UNIT_S[match.group(2).lower()]
        return rfc3339((now or datetime.now(UTC)) - timedelta(seconds=seconds))
    if text.lower() == "now":
        return rfc3339(now or datetime.now(UTC))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither RFC 3339 (2025-01-31T08:00:00Z) nor a duration before now "
            "(30m, 24h, 7d)",
            param_hint=f"'{option}'",
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return rfc3339(moment)


def parse_filters(values: Sequence[str] | None) -> dict[str, str]:
    """``--filter KEY=VALUE`` options as query parameters."""
    out: dict[str, str] = {}
    for item in values or ():
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise typer.BadParameter(f"{item!r} must look like KEY=VALUE", param_hint="'--filter'")
        if key in _OWN_OPTIONS:
            raise typer.BadParameter(
                f"use {_OWN_OPTIONS[key]} instead of --filter {key}=...", param_hint="'--filter'"
            )
        if key in out:
            raise typer.BadParameter(f"{key} given twice", param_hint="'--filter'")
        out[key] = value
    return out


def query(
    *,
    from_: str | None = None,
    to: str | None = None,
    limit: int | None = None,
    filters: Sequence[str] | None = None,
    success: bool | None = None,
    **extra: str | None,
) -> dict[str, str]:
    """The query parameters of one call; options left unset are not sent."""
    params = parse_filters(filters)
    if from_ is not None:
        params["from"] = parse_time(from_, "--from")
    if to is not None:
        params["to"] = parse_time(to, "--to")
    if limit is not None:
        params["limit"] = str(limit)
    if success is not None:
        params["success"] = "true" if success else "false"
    params.update({k: v for k, v in extra.items() if v})
    return params


def fetch(ctx: typer.Context, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
    with admin(ctx) as client:
        return client.call("GET", path, params=dict(params) if params else None)


def items_of(data: Mapping[str, Any], path: str, key: str = "items") -> list[dict[str, Any]]:
    items = data.get(key)
    if not isinstance(items, list):
        raise CliError(f"GET {path}: the admin API answer has no {key} list")
    return [item for item in items if isinstance(item, dict)]


# ------------------------------------------------------------------------------------- columns


def _col(name: str, *path: str) -> Column:
    return name, lambda obj: dig(obj, *path)


def format_ms(value: int | float, *, seconds: bool = True) -> str:
    moment = datetime.fromtimestamp(value / 1000, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ" if seconds else "%Y-%m-%dT%H:%MZ")


def when(*names: str) -> Callable[[dict[str, Any]], object]:
    """A time cell from the first of ``names`` present: unix ms as RFC 3339 (seconds), text as
    the gateway wrote it."""

    def get(obj: dict[str, Any]) -> object:
        for name in names:
            value = obj.get(name)
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int | float):
                return format_ms(value)
            if isinstance(value, str):
                try:
                    return format_ms(datetime.fromisoformat(value).timestamp() * 1000)
                except ValueError:
                    return value
            return value
        return None

    return get


def first(*names: str) -> Callable[[dict[str, Any]], object]:
    """The first non-empty of several fields (a model, else a tool, else a service...)."""

    def get(obj: dict[str, Any]) -> object:
        return next((obj[n] for n in names if obj.get(n) not in (None, "")), None)

    return get


def header(name: str) -> str:
    """A column title from a JSON field: ``total_tokens`` -> ``TOTAL-TOKENS``."""
    return name.upper().replace("_", "-")


def measure_columns(names: Sequence[str]) -> tuple[Column, ...]:
    return tuple(_col(header(n), n) for n in names)


TIME = ("TIME", when("started_at_ms", "started_at"))
STATUS = _col("STATUS", "status_code")
SUCCESS = _col("OK", "success")
LATENCY = _col("LATENCY-MS", "latency_ms")
ERROR = _col("ERROR-TYPE", "error_type")

EVENT_COLUMNS: Mapping[str, tuple[Column, ...]] = {
    "llm": (
        TIME,
        _col("ROUTE-ID", "route_id"),
        _col("VIRTUALKEY", "virtual_key_id"),
        _col("PROVIDER-ID", "provider_id"),
        ("MODEL", first("upstream_model", "logical_model")),
        STATUS,
        SUCCESS,
        LATENCY,
        _col("INPUT-TOKENS", "input_tokens"),
        _col("OUTPUT-TOKENS", "output_tokens"),
        _col("TOTAL-TOKENS", "total_tokens"),
        ERROR,
    ),
    "mcp": (
        TIME,
        _col("ROUTE-ID", "route_id"),
        _col("VIRTUALKEY", "virtual_key_id"),
        _col("SERVICE-ID", "service_id"),
        _col("METHOD", "method"),
        _col("TOOL", "tool_name"),
        STATUS,
        SUCCESS,
        LATENCY,
        _col("RESULT", "result_status"),
        ERROR,
    ),
    "acp": (
        TIME,
        _col("ROUTE-ID", "route_id"),
        _col("SERVICE-ID", "service_id"),
        _col("OPERATION", "operation"),
        _col("THREAD-ID", "thread_id"),
        _col("SESSION-ID", "session_id"),
        STATUS,
        SUCCESS,
        LATENCY,
        _col("RESULT", "result_status"),
        ERROR,
    ),
}
INTERACTION_COLUMNS: tuple[Column, ...] = (
    TIME,
    _col("KIND", "route_kind"),
    _col("ROUTE-ID", "route_id"),
    _col("OPERATION", "operation"),
    ("TARGET", first("tool_name", "upstream_model", "service_id")),
    STATUS,
    SUCCESS,
    LATENCY,
    _col("INPUT-TOKENS", "input_tokens"),
    _col("OUTPUT-TOKENS", "output_tokens"),
    _col("SESSION-ID", "session_id"),
    ERROR,
)
INTERACTION_MEASURES = ("request_count", "success_count", "failure_count", "avg_latency_ms")
SUMMARY_MEASURES = (
    "request_count",
    "success_count",
    "failure_count",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "tools_call_count",
    "turn_count",
    "avg_latency_ms",
)
SESSION_TOTAL_MEASURES = (
    "request_count",
    "failure_count",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "tools_call_count",
    "turn_count",
)
SESSION_COLUMNS: tuple[Column, ...] = (
    ("AT", when("at_ms", "at")),
    _col("KIND", "kind"),
    _col("ROUTE-ID", "route_id"),
    _col("OPERATION", "operation"),
    ("TARGET", first("model", "tool", "service_id")),
    STATUS,
    SUCCESS,
    LATENCY,
    _col("INPUT-TOKENS", "input_tokens"),
    _col("OUTPUT-TOKENS", "output_tokens"),
    ERROR,
    _col("TRACE-ID", "trace_id"),
)


def table(columns: Sequence[Column], items: Sequence[dict[str, Any]]) -> None:
    render.print_table([name for name, _ in columns], render.rows_of(items, columns))


def group_columns(group_by: object, measures: Sequence[str]) -> tuple[Column, ...]:
    name = header(group_by) if isinstance(group_by, str) and group_by else "GROUP"
    return ((name, lambda obj: obj.get("group_value")), *measure_columns(measures))


def measures_of(kind: str, items: Sequence[dict[str, Any]]) -> tuple[str, ...]:
    """The kind's measures, plus any other the gateway answered with (a newer one)."""
    known = MEASURES[kind]
    extra = sorted({k for item in items for k in item if k.endswith(("_count", "_tokens", "_ms"))})
    return (*known, *(k for k in extra if k not in known and k != "bucket_ms"))


def print_pipeline(data: Mapping[str, Any]) -> None:
    pipeline = data.get("pipeline")
    if isinstance(pipeline, dict) and pipeline:
        parts = " ".join(f"{k}={render.cell(v)}" for k, v in pipeline.items())
        typer.echo(f"\npipeline: {parts}")


def check_measure(kind: str, measure: str | None) -> str:
    chosen = measure or DEFAULT_MEASURE[kind]
    if chosen not in MEASURES[kind]:
        raise typer.BadParameter(
            f"{chosen!r} is not a {kind} measure; choose one of {', '.join(MEASURES[kind])}",
            param_hint="'--measure'",
        )
    return chosen


MeasureOpt = Annotated[
    str | None,
    typer.Option(
        "--measure",
        metavar="MEASURE",
        help="What the chart draws: llm total_tokens (default), input_tokens, output_tokens, "
        "cached_input_tokens, reasoning_tokens; any kind request_count (mcp/acp default), "
        "success_count, failure_count, avg_latency_ms; mcp tools_call_count; acp turn_count.",
        show_default=False,
    ),
]
BucketOpt = Annotated[
    str | None,
    typer.Option(
        "--bucket",
        metavar="WIDTH",
        help="Bucket width: minute, hour (the default), day, or a duration such as 30s, 5m, "
        "3h, 1d, 1.5d.",
        show_default=False,
    ),
]

# -------------------------------------------------------------------------------------- commands


def metrics_app() -> typer.Typer:
    app = typer.Typer(
        help=f"Usage metrics from the gateway's usage tables ({METRICS}).",
        no_args_is_help=True,
        rich_markup_mode=None,
    )

    @app.command(
        "summary",
        help="Show totals per kind.\n\nRequests, successes, failures, tokens (llm), tool calls "
        "(mcp), turns (acp), average latency; then the recording pipeline's counters.",
    )
    def summary(ctx: typer.Context, from_: FromOpt = None, to: ToOpt = None) -> None:
        data = fetch(ctx, METRICS, query(from_=from_, to=to))
        if state(ctx).json:
            render.print_json(data)
            return
        rows = [{"kind": k, **data[k]} for k in MEASURES if isinstance(data.get(k), dict)]
        table((_col("KIND", "kind"), *measure_columns(SUMMARY_MEASURES)), rows)
        print_pipeline(data)

    @app.command(
        "events",
        help="List usage events of one kind, newest first.",
    )
    def events(
        ctx: typer.Context,
        kind: KindOpt = Kind.llm,
        from_: FromOpt = None,
        to: ToOpt = None,
        limit: LimitOpt = None,
        filters: FilterOpt = None,
        success: SuccessOpt = None,
    ) -> None:
        path = f"{METRICS}/{kind.value}/events"
        params = query(from_=from_, to=to, limit=limit, filters=filters, success=success)
        data = fetch(ctx, path, params)
        items = items_of(data, path)
        if state(ctx).json:
            render.print_json(data)
        else:
            table(EVENT_COLUMNS[kind.value], items)

    @app.command(
        "timeseries",
        help="Chart measures over time.\n\nA table of the measures per time bucket (and "
        "group), then a chart of one of them (--measure). Without --group-by the chart has one "
        "bar per bucket; with it, one sparkline row per group on a shared scale (the 12 "
        "largest groups).\n\n\b\nToken use per route over the last day:\n"
        "  agwctl gateway metrics timeseries --from 24h --group-by route_id",
    )
    def timeseries(
        ctx: typer.Context,
        kind: KindOpt = Kind.llm,
        bucket: BucketOpt = None,
        group_by: Annotated[
            str | None,
            _group_by_opt(
                "One series per value of COLUMN, e.g. route_id, virtual_key_id, upstream_model "
                "(llm), tool_name (mcp), operation (acp), session_id, agent_id."
            ),
        ] = None,
        measure: MeasureOpt = None,
        from_: FromOpt = None,
        to: ToOpt = None,
        filters: FilterOpt = None,
        success: SuccessOpt = None,
        draw: Annotated[
            bool, typer.Option("--chart/--no-chart", help="Draw the chart under the table.")
        ] = True,
    ) -> None:
        chosen = check_measure(kind.value, measure)
        path = f"{METRICS}/{kind.value}/timeseries"
        params = query(
            from_=from_, to=to, filters=filters, success=success, bucket=bucket, group_by=group_by
        )
        data = fetch(ctx, path, params)
        items = items_of(data, path)
        if state(ctx).json:
            render.print_json(data)
            return
        grouped = data.get("group_by") or group_by
        columns: tuple[Column, ...] = (("BUCKET", when("bucket_ms", "bucket")),)
        if grouped:
            columns += ((header(str(grouped)), lambda obj: obj.get("group_value")),)
        table((*columns, *measure_columns(measures_of(kind.value, items))), items)
        if draw:
            print_chart(
                data,
                items,
                chosen,
                requested_bucket=bucket,
                group_by=str(grouped) if grouped else None,
                params=params,
            )

    @app.command(
        "breakdown",
        help="Show measures per group, largest first.\n\nOne row per route, model, key, "
        "tool, ... (--group-by), sorted by --order-by.",
    )
    def breakdown(
        ctx: typer.Context,
        kind: KindOpt = Kind.llm,
        group_by: Annotated[
            str | None,
            _group_by_opt("Group by COLUMN (default: llm route_id, mcp tool_name, acp operation)."),
        ] = None,
        order_by: Annotated[
            str | None,
            typer.Option(
                "--order-by",
                metavar="MEASURE",
                help="Sort by MEASURE, largest first (default request_count; also total_tokens, "
                "failure_count, avg_latency_ms, ...).",
                show_default=False,
            ),
        ] = None,
        from_: FromOpt = None,
        to: ToOpt = None,
        limit: LimitOpt = None,
        filters: FilterOpt = None,
        success: SuccessOpt = None,
    ) -> None:
        path = f"{METRICS}/{kind.value}/breakdown"
        params = query(
            from_=from_,
            to=to,
            limit=limit,
            filters=filters,
            success=success,
            group_by=group_by,
            order_by=order_by,
        )
        data = fetch(ctx, path, params)
        items = items_of(data, path)
        if state(ctx).json:
            render.print_json(data)
        else:
            table(group_columns(data.get("group_by"), measures_of(kind.value, items)), items)

    @app.command(
        "interactions",
        help="List requests of every kind, newest first.\n\nLLM, MCP and ACP requests in one "
        "list. With "
        "--group-by, counts per group instead (GET /admin/metrics/interactions/summary).",
    )
    def interactions(
        ctx: typer.Context,
        group_by: Annotated[
            str | None,
            _group_by_opt(
                "Count per COLUMN instead of listing: route_kind, route_protocol, route_id, "
                "virtual_key_id, session_id, agent_id."
            ),
        ] = None,
        from_: FromOpt = None,
        to: ToOpt = None,
        limit: LimitOpt = None,
        filters: FilterOpt = None,
        success: SuccessOpt = None,
    ) -> None:
        path = f"{METRICS}/interactions" + ("/summary" if group_by else "")
        params = query(
            from_=from_, to=to, limit=limit, filters=filters, success=success, group_by=group_by
        )
        show_interactions(ctx, path, params, summary=bool(group_by))

    return app


def show_interactions(
    ctx: typer.Context, path: str, params: Mapping[str, str], *, summary: bool = False
) -> None:
    data = fetch(ctx, path, params)
    items = items_of(data, path)
    if state(ctx).json:
        render.print_json(data)
    elif summary:
        table(group_columns(data.get("group_by"), INTERACTION_MEASURES), items)
    else:
        table(INTERACTION_COLUMNS, items)


def session_app() -> typer.Typer:
    app = typer.Typer(
        help="Agent sessions: one session id across LLM, MCP and ACP usage.",
        no_args_is_help=True,
        rich_markup_mode=None,
    )

    @app.command(
        "show",
        help="Show one agent session's timeline.\n\nTotals per kind (llm, mcp, acp), then "
        "every request of the session in order.",
    )
    def show(
        ctx: typer.Context,
        session_id: Annotated[
            str,
            typer.Argument(metavar="SESSION_ID", help="The agent session id.", show_default=False),
        ],
        from_: FromOpt = None,
        to: ToOpt = None,
        limit: Annotated[
            int | None,
            typer.Option(
                "--limit",
                metavar="N",
                min=1,
                max=1000,
                help="At most this many events (1-1000; the gateway's default is 1000).",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        path = f"{SESSIONS}/{segment(session_id)}"
        data = fetch(ctx, path, query(from_=from_, to=to, limit=limit))
        items = items_of(data, path)
        if state(ctx).json:
            render.print_json(data)
            return
        first_at = when("first_at_ms", "first_at")(data)
        last_at = when("last_at_ms", "last_at")(data)
        typer.echo(
            f"session {data.get('session_id', session_id)}: {len(items)} events, "
            f"{render.cell(first_at)} to {render.cell(last_at)}\n"
        )
        totals = data.get("totals")
        rows = []
        if isinstance(totals, dict):
            rows = [{"kind": k, **totals[k]} for k in MEASURES if isinstance(totals.get(k), dict)]
        table((_col("KIND", "kind"), *measure_columns(SESSION_TOTAL_MEASURES)), rows)
        typer.echo("")
        table(SESSION_COLUMNS, items)

    return app


def register(gateway: typer.Typer) -> None:
    """Add the ``metrics`` and ``session`` groups to the ``gateway`` group."""
    gateway.add_typer(metrics_app(), name="metrics")
    gateway.add_typer(session_app(), name="session")
