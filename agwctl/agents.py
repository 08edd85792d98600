"""Agent commands beyond list/get/delete/enable/disable: ``agwctl gateway agent
workspace|activity|usage|interactions|resources|health`` (reference §5.10).

Each reads ``/admin/agents/{id}/...``; usage and interactions are attributed to the agent by
the gateway (its agent id, its routes, its ACP service). Tables by default, ``-o json`` for the
admin API's answer. ``resources -f FILE`` is the one write: it replaces the agent's
``resources`` and ``routes`` (``PUT``), validated like any agent change.

No ``from __future__ import annotations`` here: typer reads the ``Annotated`` parameters.
"""

from pathlib import Path
from typing import Annotated, Any

import typer
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from agwctl import chart, metrics, render
from agwctl.acp import PERMISSION_COLUMNS
from agwctl.client import CliError, segment
from agwctl.metrics import (
    BucketOpt,
    FilterOpt,
    FromOpt,
    LimitOpt,
    SuccessOpt,
    ToOpt,
    fetch,
    items_of,
    query,
    table,
)
from agwctl.render import Column, dig
from agwctl.resources import admin, state

AGENTS = "/admin/agents"

AgentArg = Annotated[str, typer.Argument(metavar="ID", help="The agent id.", show_default=False)]

FIELD_COLUMNS: tuple[Column, ...] = (
    ("FIELD", lambda row: row.get("field")),
    ("VALUE", lambda row: row.get("value")),
)
ACP_ROUTE_COLUMNS: tuple[Column, ...] = (
    ("ID", lambda r: r.get("id")),
    ("PATH-PREFIX", lambda r: r.get("path_prefix")),
    ("SERVICE-ID", lambda r: r.get("service_id")),
)
RESOLVED_COLUMNS: tuple[Column, ...] = (
    ("KIND", lambda r: r.get("kind")),
    ("ID", lambda r: r.get("id")),
    ("EXISTS", lambda r: r.get("exists")),
    ("DISABLED", lambda r: r.get("disabled")),
    ("DETAIL", lambda r: r.get("detail")),
)
RESOLVED_ORDER = (
    "providers",
    "mcp_services",
    "virtual_keys",
    "llm_routes",
    "mcp_routes",
    "acp_routes",
)


def _path(agent_id: str, view: str) -> str:
    return f"{AGENTS}/{segment(agent_id)}/{view}"


def count(value: object) -> object:
    """A runtime figure the gateway gives as a number or as the list of things counted."""
    return len(value) if isinstance(value, list) else value


def flatten(data: dict[str, Any]) -> list[tuple[str, object]]:
    """``name: value`` rows; a nested object's fields as ``name.field`` rows, lists counted."""
    rows: list[tuple[str, object]] = []
    for name, value in data.items():
        if isinstance(value, dict):
            rows += [(f"{name}.{k}", count(v)) for k, v in value.items()]
        else:
            rows.append((name, count(value)))
    return rows


def fields_table(rows: list[tuple[str, object]]) -> None:
    table(FIELD_COLUMNS, [{"field": k, "value": v} for k, v in rows if v is not None])


def section(title: str) -> None:
    typer.echo(f"\n{title}")


def _workspace_rows(data: dict[str, Any]) -> list[tuple[str, object]]:
    agent = data.get("agent")
    rows: list[tuple[str, object]] = [
        ("id", dig(agent, "id")),
        ("name", dig(agent, "name")),
        ("disabled", dig(agent, "disabled")),
    ]
    runtime = data.get("runtime")
    if isinstance(runtime, dict):
        rows += [(f"runtime.{name}", value) for name, value in runtime.items()]
    else:
        rows.append(("runtime", runtime or dig(agent, "runtime", "type")))
    rows += [
        ("acp_service", dig(data, "acp_service", "id")),
        ("agent_type", dig(data, "acp_service", "agent_type")),
        ("cwd", dig(data, "acp_service", "cwd")),
    ]
    view = data.get("runtime_view")
    if isinstance(view, dict):
        rows += [(name, count(view.get(name))) for name in view]
    usage = data.get("usage")
    if isinstance(usage, dict):
        rows += [(f"usage.{name}", value) for name, value in usage.items()]
    links = data.get("links")
    if isinstance(links, dict):
        rows += [(f"links.{name}", value) for name, value in links.items()]
    return rows


def _resolved_rows(data: dict[str, Any]) -> list[dict[str, Any]]:
    resolved = data.get("resolved")
    if not isinstance(resolved, dict):
        return []
    names = [*RESOLVED_ORDER, *(k for k in resolved if k not in RESOLVED_ORDER)]
    rows = []
    for name in names:
        for item in resolved.get(name) or ():
            if isinstance(item, dict):
                rows.append({"kind": item.get("kind") or name, **item})
    return rows


def _read_resources(path: Path) -> dict[str, Any]:
    """A ``{resources, routes}`` file (YAML or JSON) for ``PUT .../resources``."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    try:
        data = YAML(typ="safe").load(text)
    except YAMLError as exc:
        raise CliError(f"{path}: not valid YAML or JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CliError(f"{path}: expected a mapping with resources and/or routes")
    unknown = sorted(str(k) for k in data if k not in ("resources", "routes"))
    if unknown:
        raise CliError(f"{path}: only resources and routes can be set (got {', '.join(unknown)})")
    if not data:
        raise CliError(f"{path}: give resources, routes or both")
    return {str(k): v for k, v in data.items()}


def register(apps: dict[str, typer.Typer]) -> None:
    """Add the read views (and ``resources -f``) to the ``agent`` group made by
    :mod:`agwctl.resources`."""
    app = apps["agent"]

    @app.command(
        "workspace",
        help="Show the agent at a glance.\n\nIts runtime (and whether it can serve), its ACP "
        "service and routes, pooled agent instances, turns in flight, pending permissions, ACP "
        "usage totals and links.",
    )
    def workspace(ctx: typer.Context, agent_id: AgentArg) -> None:
        path = _path(agent_id, "workspace")
        data = fetch(ctx, path)
        if state(ctx).json:
            render.print_json(data)
            return
        fields_table(_workspace_rows(data))
        routes = data.get("acp_routes")
        if isinstance(routes, list) and routes:
            section("ACP routes")
            table(ACP_ROUTE_COLUMNS, [r for r in routes if isinstance(r, dict)])

    @app.command(
        "activity",
        help="List the agent's last 50 requests.\n\nEvery kind (llm, mcp, acp), newest first; "
        "then the permission requests waiting for an answer.",
    )
    def activity(ctx: typer.Context, agent_id: AgentArg) -> None:
        path = _path(agent_id, "activity")
        data = fetch(ctx, path)
        items = items_of(data, path, "interactions")
        if state(ctx).json:
            render.print_json(data)
            return
        table(metrics.INTERACTION_COLUMNS, items)
        pending = data.get("pending_permissions")
        if isinstance(pending, list):
            section("Pending permissions")
            table(PERMISSION_COLUMNS, [p for p in pending if isinstance(p, dict)])

    @app.command(
        "usage",
        help="Show the agent's usage.\n\nLLM by upstream model, a chart of LLM use per route "
        "over time, MCP tools, ACP operations.",
    )
    def usage(
        ctx: typer.Context,
        agent_id: AgentArg,
        from_: FromOpt = None,
        to: ToOpt = None,
        bucket: BucketOpt = None,
        measure: Annotated[
            str | None,
            typer.Option(
                "--measure",
                metavar="MEASURE",
                help="What the LLM chart draws (default total_tokens; any llm measure, see "
                "'metrics timeseries').",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        chosen = metrics.check_measure("llm", measure)
        path = _path(agent_id, "usage")
        params = query(from_=from_, to=to, bucket=bucket)
        data = fetch(ctx, path, params)
        if state(ctx).json:
            render.print_json(data)
            return
        sections = (
            ("llm", "LLM by upstream model"),
            ("mcp", "MCP tools"),
            ("acp", "ACP by operation"),
        )
        printed = False
        for kind, title in sections:
            part = data.get(kind)
            if not isinstance(part, dict):
                continue
            items = items_of(part, f"{path} ({kind})")
            typer.echo(f"\n{title}" if printed else title)
            printed = True
            table(metrics.group_columns(part.get("group_by"), metrics.MEASURES[kind]), items)
            if kind == "llm":
                series = dig(data, "timeseries", "llm")
                if isinstance(series, dict):
                    chart.print_chart(
                        series,
                        items_of(series, f"{path} (timeseries.llm)"),
                        chosen,
                        requested_bucket=bucket,
                        group_by=str(series.get("group_by") or "route_id"),
                        params=params,
                    )

    @app.command(
        "interactions",
        help="List the agent's requests, newest first.\n\nLike 'metrics interactions', "
        "narrowed to the agent: its agent id, its routes, its ACP service.",
    )
    def interactions(
        ctx: typer.Context,
        agent_id: AgentArg,
        from_: FromOpt = None,
        to: ToOpt = None,
        limit: LimitOpt = None,
        filters: FilterOpt = None,
        success: SuccessOpt = None,
    ) -> None:
        params = query(from_=from_, to=to, limit=limit, filters=filters, success=success)
        metrics.show_interactions(ctx, _path(agent_id, "interactions"), params)

    @app.command(
        "resources",
        help="Show (or replace) the agent's resources and routes.\n\nEach id resolved: "
        "does it exist, is it disabled, what is it. With "
        "-f FILE, first replace them: FILE (YAML or JSON) holds resources "
        "{provider_ids, mcp_service_ids, virtual_key_ids} and/or routes {acp_route_ids, "
        "llm_route_ids, mcp_route_ids}; what it leaves out is kept.",
    )
    def resources(
        ctx: typer.Context,
        agent_id: AgentArg,
        file: Annotated[
            Path | None,
            typer.Option(
                "-f",
                "--file",
                metavar="FILE",
                help="Replace the resources and/or routes with those in FILE.",
                show_default=False,
                dir_okay=False,
            ),
        ] = None,
    ) -> None:
        path = _path(agent_id, "resources")
        if file is None:
            data = fetch(ctx, path)
        else:
            body = _read_resources(file)
            with admin(ctx) as client:
                data = client.call("PUT", path, body=body)
        if state(ctx).json:
            render.print_json(data)
        else:
            table(RESOLVED_COLUMNS, _resolved_rows(data))

    @app.command(
        "health",
        help="Show the agent's health.\n\nDisabled or not, its runtime, failures among its "
        "last 200 requests, and the usage pipeline's drop and write-failure counters.",
    )
    def health(ctx: typer.Context, agent_id: AgentArg) -> None:
        data = fetch(ctx, _path(agent_id, "health"))
        if state(ctx).json:
            render.print_json(data)
            return
        fields_table(flatten(data))
