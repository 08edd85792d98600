"""ACP commands beyond list/get/delete/enable/disable: ``agwctl gateway acp-service
sessions|transcript`` and ``agwctl gateway acp-runtime
get|inflight|permissions|close-thread|resolve-permission``.

Lists (sessions, in-flight turns, pooled instances, pending permissions) print tables with the
Go agwctl's columns (``-o json``: the admin API's answer); everything else prints the admin
API's answer as pretty JSON.

No ``from __future__ import annotations`` here: typer reads the ``Annotated`` parameters.
"""

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from agwctl import render
from agwctl.client import CliError, segment
from agwctl.render import Column, dig
from agwctl.resources import admin, show_call, show_list, state

SERVICES = "/admin/acp/services"
RUNTIME = "/admin/acp/runtime"

ServiceArg = Annotated[
    str, typer.Argument(metavar="SERVICE_ID", help="The ACP service id.", show_default=False)
]
CwdOpt = Annotated[
    str | None,
    typer.Option(
        "--cwd",
        help="Working directory (default: the service's cwd; must be inside its allowed_roots).",
        show_default=False,
    ),
]


class Outcome(StrEnum):
    selected = "selected"
    cancelled = "cancelled"


def when(*path: str) -> Any:
    """A timestamp cell: unix milliseconds as RFC 3339 (UTC, seconds); text as given."""

    def get(obj: dict[str, Any]) -> object:
        value = dig(obj, *path)
        if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
            return (
                datetime.fromtimestamp(value / 1000, UTC)
                .isoformat(timespec="seconds")
                .replace("+00:00", "Z")
            )
        return value

    return get


def scope_text(obj: dict[str, Any]) -> object:
    """A pool scope: its five NUL-joined fields (service, cwd, thread, session, model) shown
    joined by ``|`` (an empty session or model shows as nothing between two bars)."""
    value = obj.get("scope")
    return value.replace("\x00", "|") if isinstance(value, str) else value


def _col(name: str, *path: str) -> Column:
    return name, lambda obj: dig(obj, *path)


SESSION_COLUMNS: tuple[Column, ...] = (
    _col("SESSION-ID", "session_id"),
    _col("CWD", "cwd"),
    _col("TITLE", "title"),
    _col("UPDATED-AT", "updated_at"),
)
INFLIGHT_COLUMNS: tuple[Column, ...] = (("SCOPE", scope_text),)
INSTANCE_COLUMNS: tuple[Column, ...] = (
    ("SCOPE", scope_text),
    _col("SESSION-ID", "session_id"),
    _col("ALIVE", "alive"),
    _col("ACTIVE", "active"),
    ("LAST-USED", when("last_used")),
)
PERMISSION_COLUMNS: tuple[Column, ...] = (
    _col("REQUEST-ID", "request_id"),
    _col("SERVICE-ID", "service_id"),
    _col("SESSION-ID", "session_id"),
    ("CREATED-AT", when("created_at")),
)


def _service(oid: str) -> str:
    return f"{SERVICES}/{segment(oid)}"


def _table(columns: tuple[Column, ...], items: object) -> None:
    rows = [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []
    render.print_table([name for name, _ in columns], render.rows_of(rows, columns))


def _runtime_view(ctx: typer.Context) -> dict[str, Any]:
    with admin(ctx) as client:
        return client.call("GET", RUNTIME)


def add_service_commands(app: typer.Typer) -> None:
    """``sessions`` and ``transcript`` on the ``acp-service`` group (next to list/get/...)."""

    @app.command(
        "sessions",
        help="List the agent's own sessions (session/list).\n\nThe gateway starts a "
        "short-lived agent process for the call. Only sessions whose cwd is the requested one "
        "are shown.",
    )
    def sessions(
        ctx: typer.Context,
        oid: ServiceArg,
        cwd: CwdOpt = None,
        cursor: Annotated[
            str | None,
            typer.Option(
                "--cursor", help="Ask for the page after this cursor.", show_default=False
            ),
        ] = None,
    ) -> None:
        params = {k: v for k, v in (("cwd", cwd), ("cursor", cursor)) if v}
        path = _service(oid) + "/sessions"
        with admin(ctx) as client:
            data = client.call("GET", path, params=params or None)
        items = data.get("sessions")
        if not isinstance(items, list):
            raise CliError(f"GET {path}: the admin API answer has no sessions list")
        if state(ctx).json:
            render.print_json(data)
            return
        _table(SESSION_COLUMNS, items)
        if data.get("next_cursor"):
            typer.echo(f"more: --cursor {data['next_cursor']}", err=True)

    @app.command(
        "transcript",
        help="Replay one agent session (session/load) as user, assistant and reasoning messages.",
    )
    def transcript(
        ctx: typer.Context,
        oid: ServiceArg,
        session_id: Annotated[
            str,
            typer.Argument(
                metavar="SESSION_ID", help="The agent's session id.", show_default=False
            ),
        ],
        cwd: CwdOpt = None,
    ) -> None:
        params = {"cwd": cwd} if cwd else None
        show_call(ctx, "GET", f"{_service(oid)}/sessions/{segment(session_id)}/transcript", params)


def runtime_app() -> typer.Typer:
    app = typer.Typer(
        help=f"The ACP plane's runtime: pooled agents, turns, permissions ({RUNTIME}).",
        no_args_is_help=True,
        rich_markup_mode=None,
    )

    @app.command(
        "get",
        help="Show the runtime: turns in flight, pooled agent instances, pending permissions."
        "\n\nThree tables (-o json: the whole view, with each instance's session metadata).",
    )
    def get(ctx: typer.Context) -> None:
        view = _runtime_view(ctx)
        if state(ctx).json:
            render.print_json(view)
            return
        _table(INFLIGHT_COLUMNS, view.get("in_flight"))
        typer.echo("")
        _table(INSTANCE_COLUMNS, view.get("instances"))
        typer.echo("")
        _table(PERMISSION_COLUMNS, view.get("pending_permissions"))

    @app.command("inflight", help="List the turns in flight (their pool scopes).")
    def inflight(ctx: typer.Context) -> None:
        show_list(ctx, f"{RUNTIME}/inflight", INFLIGHT_COLUMNS, {})

    @app.command(
        "permissions",
        help="List the interactive permission requests waiting for an answer.",
    )
    def permissions(ctx: typer.Context) -> None:
        view = _runtime_view(ctx)
        items = view.get("pending_permissions")
        if not isinstance(items, list):
            raise CliError(f"GET {RUNTIME}: the admin API answer has no pending_permissions list")
        if state(ctx).json:
            render.print_json({"items": items})
        else:
            _table(PERMISSION_COLUMNS, items)

    @app.command(
        "close-thread",
        help="Close the pooled agent instances of one thread (every scope of it).",
    )
    def close_thread(
        ctx: typer.Context,
        service_id: ServiceArg,
        thread_id: Annotated[
            str,
            typer.Argument(
                metavar="THREAD_ID", help="The thread id turns used.", show_default=False
            ),
        ],
    ) -> None:
        show_call(ctx, "DELETE", f"{RUNTIME}/threads/{segment(service_id)}/{segment(thread_id)}")

    @app.command(
        "resolve-permission",
        help="Answer a pending interactive permission request (once; a second answer is 404).",
    )
    def resolve_permission(
        ctx: typer.Context,
        request_id: Annotated[
            str,
            typer.Argument(
                metavar="REQUEST_ID",
                help="The perm-... id, from the turn's permission event or 'permissions'.",
                show_default=False,
            ),
        ],
        outcome: Annotated[
            Outcome,
            typer.Option(
                "--outcome",
                help="selected (allow the option given with --option-id) or cancelled.",
                show_default=False,
            ),
        ],
        option_id: Annotated[
            str | None,
            typer.Option(
                "--option-id",
                help="The ACP option id to select (required with --outcome selected).",
                show_default=False,
            ),
        ] = None,
    ) -> None:
        if outcome is Outcome.selected and not option_id:
            raise CliError("--option-id is required with --outcome selected")
        body: dict[str, Any] = {"request_id": request_id, "outcome": outcome.value}
        if option_id and outcome is Outcome.selected:
            body["option_id"] = option_id
        with admin(ctx) as client:
            path = f"{RUNTIME}/permissions/{segment(request_id)}"
            render.print_json(client.call("POST", path, body=body))

    return app


def register(gateway: typer.Typer, apps: dict[str, typer.Typer]) -> None:
    """Add the ACP commands: to the ``acp-service`` group made by :mod:`agwctl.resources`, and
    the ``acp-runtime`` group."""
    add_service_commands(apps["acp-service"])
    gateway.add_typer(runtime_app(), name="acp-runtime")
