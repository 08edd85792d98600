"""Usage metrics from the command line: ``agwctl gateway metrics
summary|events|timeseries|breakdown|interactions`` and ``agwctl gateway session show``.

Each command is one ``GET /admin/metrics...`` call. Options mirror the query parameters:
``--from``/``--to`` (RFC 3339, or a duration before now such as ``30m``, ``24h``, ``7d``),
``--limit``, ``--filter KEY=VALUE`` (repeatable; any filter the endpoint accepts),
``--user``/``--org`` (the ``user_id``/``org_id`` filters), ``--success``/``--failure``,
``--group-by`` (``user``/``org`` stand for ``user_id``/``org_id``), ``--order-by``, ``--bucket``.
The gateway validates them and shows its message as it gave it (``agwctl: GET ...: 400 ...``).

Output is a table (``-o json``: the admin API's answer, unchanged). ``timeseries`` also draws a
chart under its table, plain text that reads the same without colour and fits the terminal's
width: without ``--group-by`` one horizontal bar per bucket, with it one sparkline row per group
(every row on the same scale), so a day of token use per route or per key is one glance.

The measures are the server's catalog (:mod:`agw.usage.measures`, read, never copied); the
tables' columns are in :mod:`agwctl.metrics_tables` and the chart is drawn by :mod:`agwctl.chart`
(both shared with ``agent usage``).

No ``from __future__ import annotations`` here: typer reads the ``Annotated`` parameters.
"""

import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any

import typer

from agw.clock import rfc3339
from agw.usage.measures import KINDS
from agwctl import render
from agwctl.chart import print_chart
from agwctl.client import CliError, segment
from agwctl.metrics_tables import (
    EVENT_COLUMNS,
    INTERACTION_COLUMNS,
    INTERACTION_MEASURES,
    MEASURES,
    SESSION_COLUMNS,
    SESSION_TOTAL_MEASURES,
    SUMMARY_MEASURES,
    col,
    group_columns,
    header,
    measure_columns,
    measures_of,
    print_pipeline,
    table,
    when,
)
from agwctl.render import Column
from agwctl.resources import admin, state

__all__ = [  # what ``agent usage`` and ``agent interactions`` (agwctl/agents.py) share
    "INTERACTION_COLUMNS",
    "MEASURES",
    "BucketOpt",
    "FilterOpt",
    "FromOpt",
    "LimitOpt",
    "SuccessOpt",
    "ToOpt",
    "check_measure",
    "fetch",
    "group_columns",
    "items_of",
    "query",
    "register",
    "show_interactions",
    "table",
]

METRICS = "/admin/metrics"
SESSIONS = f"{METRICS}/sessions"


class Kind(StrEnum):
    """The usage kinds of the catalog (:data:`agw.usage.measures.KINDS`)."""

    llm = "llm"
    mcp = "mcp"
    acp = "acp"
    a2a = "a2a"


# Parameters that have their own option: --filter may not set them.
_OWN_OPTIONS: Mapping[str, str] = {
    "from": "--from",
    "to": "--to",
    "limit": "--limit",
    "success": "--success/--failure",
    "group_by": "--group-by",
    "order_by": "--order-by",
    "bucket": "--bucket",
    "user_id": "--user",
    "org_id": "--org",
}

GROUP_ALIASES: Mapping[str, str] = {"user": "user_id", "org": "org_id"}

# ------------------------------------------------------------------------------------ options

KindOpt = Annotated[
    Kind, typer.Option("--kind", help="Which usage table (a plane).", case_sensitive=False)
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
UserOpt = Annotated[
    str | None,
    typer.Option(
        "--user",
        metavar="USER",
        help="Only requests of this user (the user_id filter: the JWT's user claim).",
        show_default=False,
    ),
]
OrgOpt = Annotated[
    str | None,
    typer.Option(
        "--org",
        metavar="ORG",
        help="Only requests of this organization (the org_id filter).",
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
    """The query parameters of one call; options left unset are not sent. ``group_by`` may be
    a short name of :data:`GROUP_ALIASES` (``user``, ``org``: the API names the columns)."""
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
    if "group_by" in params:
        params["group_by"] = GROUP_ALIASES.get(params["group_by"].strip(), params["group_by"])
    return params


def fetch(ctx: typer.Context, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
    with admin(ctx) as client:
        return client.call("GET", path, params=dict(params) if params else None)


def items_of(data: Mapping[str, Any], path: str, key: str = "items") -> list[dict[str, Any]]:
    items = data.get(key)
    if not isinstance(items, list):
        raise CliError(f"GET {path}: the admin API answer has no {key} list")
    return [item for item in items if isinstance(item, dict)]


# ------------------------------------------------------------------------------------ measures


def check_measure(kind: str, measure: str | None) -> str:
    chosen = measure or KINDS[kind].chart_measure
    if chosen not in MEASURES[kind]:
        raise typer.BadParameter(
            f"{chosen!r} is not a {kind} measure; choose one of {', '.join(MEASURES[kind])}",
            param_hint="'--measure'",
        )
    return chosen


def measure_help() -> str:
    """``--measure``'s help, from the catalog: a kind's own measures (its default first when
    it is one of them), then the ones every kind has, then the other kinds' own."""
    kinds = list(KINDS.values())
    shared = [n for n in kinds[0].measure_names if all(n in k.measure_names for k in kinds)]
    before, after = [], []
    for kind in kinds:
        own = [n for n in kind.measure_names if n not in shared]
        if kind.chart_measure in own:
            own.remove(kind.chart_measure)
            before.append(f"{kind.name} {', '.join([f'{kind.chart_measure} (default)', *own])}")
        elif own:
            after.append(f"{kind.name} {', '.join(own)}")
    common = []
    for name in shared:
        defaults = "/".join(k.name for k in kinds if k.chart_measure == name)
        common.append(f"{name} ({defaults} default)" if defaults else name)
    parts = [*before, "any kind " + ", ".join(common), *after]
    return f"What the chart draws: {'; '.join(parts)}."


MeasureOpt = Annotated[
    str | None,
    typer.Option(
        "--measure",
        metavar="MEASURE",
        help=measure_help(),
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
        table((col("KIND", "kind"), *measure_columns(SUMMARY_MEASURES)), rows)
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
        user: UserOpt = None,
        org: OrgOpt = None,
        success: SuccessOpt = None,
    ) -> None:
        path = f"{METRICS}/{kind.value}/events"
        params = query(
            from_=from_,
            to=to,
            limit=limit,
            filters=filters,
            success=success,
            user_id=user,
            org_id=org,
        )
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
                "One series per value of COLUMN, e.g. route_id, virtual_key_id, user, org, "
                "upstream_model (llm), tool_name (mcp), operation (acp), method (a2a), session_id."
            ),
        ] = None,
        measure: MeasureOpt = None,
        from_: FromOpt = None,
        to: ToOpt = None,
        filters: FilterOpt = None,
        user: UserOpt = None,
        org: OrgOpt = None,
        success: SuccessOpt = None,
        draw: Annotated[
            bool, typer.Option("--chart/--no-chart", help="Draw the chart under the table.")
        ] = True,
    ) -> None:
        chosen = check_measure(kind.value, measure)
        path = f"{METRICS}/{kind.value}/timeseries"
        params = query(
            from_=from_,
            to=to,
            filters=filters,
            success=success,
            user_id=user,
            org_id=org,
            bucket=bucket,
            group_by=group_by,
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
        "user, org, tool, ... (--group-by), sorted by --order-by.\n\n\b\nSpend per person "
        "over the last week:\n"
        "  agwctl gateway metrics breakdown --from 7d --group-by user --order-by total_tokens",
    )
    def breakdown(
        ctx: typer.Context,
        kind: KindOpt = Kind.llm,
        group_by: Annotated[
            str | None,
            _group_by_opt(
                "Group by COLUMN, e.g. route_id, virtual_key_id, user, org, upstream_model "
                "(default: llm route_id, mcp tool_name, acp operation, a2a method)."
            ),
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
        user: UserOpt = None,
        org: OrgOpt = None,
        success: SuccessOpt = None,
    ) -> None:
        path = f"{METRICS}/{kind.value}/breakdown"
        params = query(
            from_=from_,
            to=to,
            limit=limit,
            filters=filters,
            success=success,
            user_id=user,
            org_id=org,
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
                "virtual_key_id, user (user_id), org (org_id), session_id, agent_id."
            ),
        ] = None,
        from_: FromOpt = None,
        to: ToOpt = None,
        limit: LimitOpt = None,
        filters: FilterOpt = None,
        user: UserOpt = None,
        org: OrgOpt = None,
        success: SuccessOpt = None,
    ) -> None:
        path = f"{METRICS}/interactions" + ("/summary" if group_by else "")
        params = query(
            from_=from_,
            to=to,
            limit=limit,
            filters=filters,
            success=success,
            user_id=user,
            org_id=org,
            group_by=group_by,
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
        help="Show one agent session's timeline.\n\nTotals per kind (llm, mcp, acp, a2a), then "
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
        table((col("KIND", "kind"), *measure_columns(SESSION_TOTAL_MEASURES)), rows)
        typer.echo("")
        table(SESSION_COLUMNS, items)

    return app


def register(gateway: typer.Typer) -> None:
    """Add the ``metrics`` and ``session`` groups to the ``gateway`` group."""
    gateway.add_typer(metrics_app(), name="metrics")
    gateway.add_typer(session_app(), name="session")
