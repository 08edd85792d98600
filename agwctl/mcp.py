"""MCP commands beyond list/get/delete/enable/disable: ``agwctl gateway mcp-service
session|capabilities|tools|tool-call|resources|resource-templates|resource-read|prompts|
prompt-get`` and ``agwctl gateway mcp-runtime get|inflight|progress|history|sessions|cancel``.

Lists (tools, resources, prompts, runtime tables) print a table (``-o json``: the admin API's
answer); everything else prints the admin API's answer as pretty JSON.

No ``from __future__ import annotations`` here: typer reads the ``Annotated`` parameters.
"""

import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from agwctl import render
from agwctl.client import CliError, segment
from agwctl.render import Column, dig
from agwctl.resources import admin, show_call, show_list, state

SERVICES = "/admin/mcp/services"
RUNTIME = "/admin/mcp/runtime"

ServiceArg = Annotated[
    str, typer.Argument(metavar="ID", help="The MCP service id.", show_default=False)
]
ArgumentsOpt = Annotated[
    str | None,
    typer.Option(
        "--arguments",
        metavar="JSON",
        help='Arguments as a JSON object, e.g. \'{"timezone": "UTC"}\'.',
        show_default=False,
    ),
]
CursorOpt = Annotated[
    str | None,
    typer.Option(
        "--cursor",
        help="Ask for the page after this cursor (the upstream's own).",
        show_default=False,
    ),
]


def _when(*path: str) -> Any:
    """A timestamp cell: unix milliseconds as RFC 3339 (UTC, seconds), text as given."""

    def get(obj: dict[str, Any]) -> object:
        value = dig(obj, *path)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return (
                datetime.fromtimestamp(value / 1000, UTC)
                .isoformat(timespec="seconds")
                .replace("+00:00", "Z")
            )
        return value

    return get


def _first_line(*path: str, width: int = 60) -> Any:
    def get(obj: dict[str, Any]) -> object:
        value = dig(obj, *path)
        if not isinstance(value, str):
            return value
        line = value.strip().split("\n", 1)[0]
        return line if len(line) <= width else line[: width - 3] + "..."

    return get


def _argument_names(obj: dict[str, Any]) -> object:
    args = obj.get("arguments")
    if not isinstance(args, list):
        return None
    return [
        str(a.get("name")) + ("" if a.get("required") else "?") for a in args if isinstance(a, dict)
    ]


def _col(name: str, *path: str) -> Column:
    return name, lambda obj: dig(obj, *path)


TOOL_COLUMNS: tuple[Column, ...] = (
    _col("NAME", "name"),
    ("DESCRIPTION", _first_line("description")),
)
RESOURCE_COLUMNS: tuple[Column, ...] = (
    _col("URI", "uri"),
    _col("NAME", "name"),
    _col("MIME-TYPE", "mimeType"),
)
TEMPLATE_COLUMNS: tuple[Column, ...] = (
    _col("URI-TEMPLATE", "uriTemplate"),
    _col("NAME", "name"),
    _col("MIME-TYPE", "mimeType"),
)
PROMPT_COLUMNS: tuple[Column, ...] = (
    _col("NAME", "name"),
    ("ARGUMENTS", _argument_names),
    ("DESCRIPTION", _first_line("description")),
)
INFLIGHT_COLUMNS: tuple[Column, ...] = (
    _col("ROUTE-ID", "route_id"),
    _col("REQUEST-ID", "request_id"),
    _col("METHOD", "method"),
    _col("PROGRESS-TOKEN", "progress_token"),
    ("STARTED-AT", _when("started_at")),
    ("CANCELLED-AT", _when("cancelled_at")),
)
PROGRESS_COLUMNS: tuple[Column, ...] = (
    _col("ROUTE-ID", "route_id"),
    _col("PROGRESS-TOKEN", "progress_token"),
    _col("REQUEST-ID", "request_id"),
    _col("PROGRESS", "progress"),
    _col("TOTAL", "total"),
    _col("MESSAGE", "message"),
    ("UPDATED-AT", _when("updated_at")),
)
HISTORY_COLUMNS: tuple[Column, ...] = (
    _col("ROUTE-ID", "route_id"),
    _col("REQUEST-ID", "request_id"),
    _col("METHOD", "method"),
    ("STARTED-AT", _when("started_at")),
    ("COMPLETED-AT", _when("completed_at")),
    _col("CANCELLED", "cancelled"),
    ("ERROR", _first_line("error")),
)
SESSION_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("ERA", "era"),
    _col("ROUTE-ID", "route_id"),
    _col("VIRTUALKEY", "virtual_key_id"),
    _col("PROTOCOL-VERSION", "protocol_version"),
    ("UPSTREAMS", lambda s: [dig(u, "service_id") for u in s.get("upstreams") or []]),
    ("CREATED-AT", _when("created_at")),
    ("LAST-USED", _when("last_used_at")),
)


def parse_arguments(text: str | None) -> dict[str, Any] | None:
    """``--arguments``: a JSON object, or nothing."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise CliError(f"--arguments is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise CliError(f"--arguments must be a JSON object, not {type(value).__name__}")
    return value


def _service(oid: str) -> str:
    return f"{SERVICES}/{segment(oid)}"


def _page(ctx: typer.Context, path: str, columns: Sequence[Column], cursor: str | None) -> None:
    """One page of a service's list: a table, then the next cursor (on stderr) if any."""
    params = {"cursor": cursor} if cursor else None
    with admin(ctx) as client:
        data = client.call("GET", path, params=params)
    items = data.get("items")
    if not isinstance(items, list):
        raise CliError(f"GET {path}: the admin API answer has no items list")
    if state(ctx).json:
        render.print_json(data)
        return
    rows = [item for item in items if isinstance(item, dict)]
    render.print_table([name for name, _ in columns], render.rows_of(rows, columns))
    if data.get("next_cursor"):
        typer.echo(f"more: --cursor {data['next_cursor']}", err=True)


def _post(ctx: typer.Context, path: str, body: dict[str, Any]) -> None:
    with admin(ctx) as client:
        render.print_json(client.call("POST", path, body=body))


def add_service_commands(app: typer.Typer) -> None:
    """The discovery and call commands of ``mcp-service`` (next to list/get/delete/...)."""

    @app.command("session", help="Show the gateway's own session with the service.")
    def session(ctx: typer.Context, oid: ServiceArg) -> None:
        show_call(ctx, "GET", _service(oid) + "/sessions")

    @app.command(
        "capabilities",
        help="Show the service's answer to initialize.",
    )
    def capabilities(ctx: typer.Context, oid: ServiceArg) -> None:
        show_call(ctx, "GET", _service(oid) + "/capabilities")

    @app.command("tools", help="List the service's tools (first page).")
    def tools(ctx: typer.Context, oid: ServiceArg, cursor: CursorOpt = None) -> None:
        _page(ctx, _service(oid) + "/tools", TOOL_COLUMNS, cursor)

    @app.command("tool-call", help="Call one tool of the service; print the result.")
    def tool_call(
        ctx: typer.Context,
        oid: ServiceArg,
        tool: Annotated[
            str, typer.Argument(metavar="TOOL", help="The tool name.", show_default=False)
        ],
        arguments: ArgumentsOpt = None,
    ) -> None:
        body: dict[str, Any] = {"name": tool}
        args = parse_arguments(arguments)
        if args is not None:
            body["arguments"] = args
        _post(ctx, _service(oid) + "/tools/call", body)

    @app.command("resources", help="List the service's resources (first page).")
    def resources(ctx: typer.Context, oid: ServiceArg, cursor: CursorOpt = None) -> None:
        _page(ctx, _service(oid) + "/resources", RESOURCE_COLUMNS, cursor)

    @app.command("resource-templates", help="List the service's resource templates.")
    def resource_templates(ctx: typer.Context, oid: ServiceArg, cursor: CursorOpt = None) -> None:
        _page(ctx, _service(oid) + "/resource-templates", TEMPLATE_COLUMNS, cursor)

    @app.command("resource-read", help="Read one resource of the service.")
    def resource_read(
        ctx: typer.Context,
        oid: ServiceArg,
        uri: Annotated[
            str, typer.Argument(metavar="URI", help="The resource URI.", show_default=False)
        ],
    ) -> None:
        _post(ctx, _service(oid) + "/resources/read", {"uri": uri})

    @app.command("prompts", help="List the service's prompts (first page).")
    def prompts(ctx: typer.Context, oid: ServiceArg, cursor: CursorOpt = None) -> None:
        _page(ctx, _service(oid) + "/prompts", PROMPT_COLUMNS, cursor)

    @app.command("prompt-get", help="Get one prompt of the service, rendered.")
    def prompt_get(
        ctx: typer.Context,
        oid: ServiceArg,
        name: Annotated[
            str, typer.Argument(metavar="NAME", help="The prompt name.", show_default=False)
        ],
        arguments: ArgumentsOpt = None,
    ) -> None:
        body: dict[str, Any] = {"name": name}
        args = parse_arguments(arguments)
        if args is not None:
            body["arguments"] = args
        _post(ctx, _service(oid) + "/prompts/get", body)


def runtime_app() -> typer.Typer:
    app = typer.Typer(
        help=f"The MCP plane's runtime state ({RUNTIME}).",
        no_args_is_help=True,
        rich_markup_mode=None,
    )

    @app.command(
        "get",
        help="Show the whole runtime view.\n\nIn flight, progress, sessions, fail-open "
        "failures and stdio processes, as JSON.",
    )
    def get(ctx: typer.Context) -> None:
        show_call(ctx, "GET", RUNTIME)

    @app.command("inflight", help="List the requests in flight.")
    def inflight(ctx: typer.Context) -> None:
        show_list(ctx, f"{RUNTIME}/inflight", INFLIGHT_COLUMNS, {})

    @app.command("progress", help="List the latest progress of each progress token.")
    def progress(ctx: typer.Context) -> None:
        show_list(ctx, f"{RUNTIME}/progress", PROGRESS_COLUMNS, {})

    @app.command("history", help="List completed requests (the last 1000).")
    def history(
        ctx: typer.Context,
        route_id: Annotated[
            str | None, typer.Option("--route-id", help="Only this route's requests.")
        ] = None,
    ) -> None:
        show_list(ctx, f"{RUNTIME}/history", HISTORY_COLUMNS, {"route_id": route_id})

    @app.command("sessions", help="List the client sessions (/admin/mcp/sessions).")
    def sessions(ctx: typer.Context) -> None:
        show_list(ctx, "/admin/mcp/sessions", SESSION_COLUMNS, {})

    @app.command("cancel", help="Cancel a request in flight.")
    def cancel(
        ctx: typer.Context,
        route_id: Annotated[
            str, typer.Argument(metavar="ROUTE_ID", help="The MCP route id.", show_default=False)
        ],
        request_id: Annotated[
            str,
            typer.Argument(
                metavar="REQUEST_ID",
                help="The request id, as inflight lists it.",
                show_default=False,
            ),
        ],
    ) -> None:
        path = f"{RUNTIME}/inflight/{segment(route_id)}/{segment(request_id)}/cancel"
        show_call(ctx, "POST", path)

    return app


def register(gateway: typer.Typer, apps: dict[str, typer.Typer]) -> None:
    """Add the MCP commands: to the ``mcp-service`` group made by :mod:`agwctl.resources`, and
    the ``mcp-runtime`` group."""
    add_service_commands(apps["mcp-service"])
    gateway.add_typer(runtime_app(), name="mcp-runtime")
