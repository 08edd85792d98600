"""``agwctl gateway <family> list|get|delete|enable|disable`` for every admin API family, plus
the read-only registries (provider types, LLM API handler types, cliauth authenticators).

``list`` prints a table (``-o json``: the items as JSON); the other verbs print the admin API's
answer as pretty JSON.

No ``from __future__ import annotations`` here: the commands are closures whose ``Annotated``
parameters refer to local values, which typer could not resolve from strings.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import typer

from agwctl import render
from agwctl.client import AdminClient, Ctl, segment
from agwctl.render import Column, dig

Filters = dict[str, str | None]


def state(ctx: typer.Context) -> Ctl:
    obj = ctx.find_object(Ctl)
    return obj if obj is not None else Ctl()


def admin(ctx: typer.Context) -> AdminClient:
    return AdminClient(state(ctx).admin)


def show_list(ctx: typer.Context, path: str, columns: Sequence[Column], filters: Filters) -> None:
    params = {k: v for k, v in filters.items() if v}
    with admin(ctx) as client:
        items = client.items(path, params or None)
    if state(ctx).json:
        render.print_json({"items": items})
    else:
        render.print_table([name for name, _ in columns], render.rows_of(items, columns))


def show_call(
    ctx: typer.Context, method: str, path: str, params: dict[str, str] | None = None
) -> None:
    with admin(ctx) as client:
        render.print_json(client.call(method, path, params=params))


# ------------------------------------------------------------------------------- table columns


def _llm_target(route: dict[str, Any]) -> object:
    policy = route.get("target_policy")
    if not isinstance(policy, dict):
        return None
    if policy.get("type") == "logical-model" or policy.get("model_targets"):
        return "model:" + str(policy.get("default_model") or "")
    return policy.get("provider_id") or dig(policy, "provider_target", "provider_id")


def _endpoint(service: dict[str, Any]) -> object:
    if service.get("url"):
        return service["url"]
    parts = [service.get("command") or "", *(service.get("args") or [])]
    return " ".join(str(p) for p in parts if p) or None


def _runtime_target(agent: dict[str, Any]) -> object:
    runtime = agent.get("runtime")
    return dig(runtime, "acp", "service_id") or dig(runtime, "http", "endpoint")


def _col(name: str, *path: str) -> Column:
    return name, lambda obj: dig(obj, *path)


SOURCE = _col("SOURCE", "source")
DISABLED = _col("DISABLED", "disabled")

PROVIDER_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("TYPE", "provider_type"),
    _col("DEFAULT-MODEL", "default_model"),
    DISABLED,
    SOURCE,
)
LLM_ROUTE_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("PROTOCOL", "protocol"),
    _col("PATH-PREFIX", "match_policy", "path_prefix"),
    DISABLED,
    ("TARGET", _llm_target),
    SOURCE,
)
MCP_SERVICE_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("NAME", "name"),
    _col("TRANSPORT", "transport"),
    ("ENDPOINT", _endpoint),
    DISABLED,
    SOURCE,
)
SERVICE_ROUTE_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("PATH-PREFIX", "match_policy", "path_prefix"),
    _col("SERVICE-ID", "service_id"),
    _col("VIRTUALKEY", "auth_policy", "require_virtual_key"),
    DISABLED,
    SOURCE,
)
MCP_ROUTE_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("PATH-PREFIX", "match_policy", "path_prefix"),
    ("SERVICE-ID", lambda route: route.get("service_id") or route.get("service_ids")),
    _col("VIRTUALKEY", "auth_policy", "require_virtual_key"),
    DISABLED,
    SOURCE,
)
ACP_SERVICE_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("NAME", "name"),
    _col("AGENT-TYPE", "agent_type"),
    _col("CWD", "cwd"),
    _col("PERMISSION-MODE", "permission_mode"),
    DISABLED,
    SOURCE,
)
A2A_SERVICE_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("NAME", "name"),
    _col("CARD-URL", "card_url"),
    _col("AUTH", "auth", "type"),
    DISABLED,
    SOURCE,
)
AGENT_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("NAME", "name"),
    _col("RUNTIME", "runtime", "type"),
    ("RUNTIME-TARGET", _runtime_target),
    DISABLED,
    SOURCE,
)
JWT_PROVIDER_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("ISSUER", "issuer"),
    _col("AUDIENCES", "audiences"),
    _col("JWKS", "jwks_uri"),
    DISABLED,
    SOURCE,
)
AUTHZ_POLICY_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("ROUTE-KINDS", "route_kinds"),
    _col("ALLOW", "allow"),
    _col("DENY", "deny"),
    DISABLED,
    SOURCE,
)
VIRTUAL_KEY_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("KEY", "key"),
    _col("TAG", "tag"),
    DISABLED,
    _col("ALLOWED-ROUTES", "allowed_route_ids"),
    SOURCE,
)
CREDENTIAL_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("PROVIDER-ID", "provider_id"),
    _col("PROVIDER-TYPE", "provider_type"),
    _col("TYPE", "type"),
    _col("LABEL", "label"),
    DISABLED,
    _col("UNAVAILABLE", "unavailable"),
)


def _caps(limit: dict[str, Any]) -> object:
    caps = limit.get("caps")
    if not isinstance(caps, dict):
        return None
    return [f"{name}={value}" for name, value in caps.items()]


LIMIT_COLUMNS: tuple[Column, ...] = (
    _col("ID", "id"),
    _col("SUBJECT", "subject"),
    _col("WINDOW", "window"),
    ("CAPS", _caps),
    _col("ENFORCE", "enforce"),
    _col("ON-EXCEED", "on_exceed"),
    _col("SUBJECTS", "subjects_total"),
    DISABLED,
    SOURCE,
)
MANAGED_MODEL_COLUMNS: tuple[Column, ...] = (
    _col("PROVIDER-ID", "provider_id"),
    _col("UPSTREAM-MODEL", "upstream_model"),
    _col("ENABLED", "enabled"),
    _col("CREDENTIAL-SCOPE", "credential_scope"),
    SOURCE,
)

DISCOVERED_COLUMNS: tuple[Column, ...] = (
    _col("UPSTREAM-MODEL", "upstream_model"),
    _col("DISPLAY-NAME", "display_name"),
    _col("STATUS", "status"),
    _col("FETCHED-AT", "fetched_at"),
)


# ------------------------------------------------------------------------- generic families


@dataclass(frozen=True)
class Family:
    command: str  # CLI group name: "llm-route"
    title: str  # words for help: "LLM route"
    path: str  # admin API collection: "/admin/llm/routes"
    columns: tuple[Column, ...]
    custom_list: bool = False  # list has filter options, defined below


FAMILIES: tuple[Family, ...] = (
    Family("provider", "provider", "/admin/llm/providers", PROVIDER_COLUMNS, custom_list=True),
    Family("llm-route", "LLM route", "/admin/llm/routes", LLM_ROUTE_COLUMNS),
    Family("mcp-service", "MCP service", "/admin/mcp/services", MCP_SERVICE_COLUMNS),
    Family("mcp-route", "MCP route", "/admin/mcp/routes", MCP_ROUTE_COLUMNS),
    Family("acp-service", "ACP service", "/admin/acp/services", ACP_SERVICE_COLUMNS),
    Family("acp-route", "ACP route", "/admin/acp/routes", SERVICE_ROUTE_COLUMNS),
    Family("agent", "agent", "/admin/agents", AGENT_COLUMNS),
    Family("a2a-service", "A2A service", "/admin/a2a/services", A2A_SERVICE_COLUMNS),
    Family("a2a-route", "A2A route", "/admin/a2a/routes", SERVICE_ROUTE_COLUMNS),
    Family(
        "virtualkey", "virtual key", "/admin/virtual_keys", VIRTUAL_KEY_COLUMNS, custom_list=True
    ),
    Family("credential", "credential", "/admin/credentials", CREDENTIAL_COLUMNS, custom_list=True),
    Family("jwt-provider", "JWT provider", "/admin/jwt_providers", JWT_PROVIDER_COLUMNS),
    Family(
        "authz-policy",
        "authorization policy",
        "/admin/authorization_policies",
        AUTHZ_POLICY_COLUMNS,
    ),
    Family("limits", "limit", "/admin/limits", LIMIT_COLUMNS),  # + status, reset: agwctl.limits
)

_REVEAL_HELP = "Show secrets in clear (they are shown as <redacted> otherwise)."
_LIST_HELP = "List {}s (a table; -o json for JSON)."


def family_app(fam: Family) -> typer.Typer:
    return typer.Typer(
        help=f"Manage {fam.title}s ({fam.path}).", no_args_is_help=True, rich_markup_mode=None
    )


def add_verbs(fam: Family, app: typer.Typer) -> None:
    """list (unless the family has its own), get, delete, enable, disable."""
    id_arg = typer.Argument(metavar="ID", help=f"The {fam.title} id.", show_default=False)

    if not fam.custom_list:

        @app.command("list", help=_LIST_HELP.format(fam.title))
        def list_(ctx: typer.Context) -> None:
            show_list(ctx, fam.path, fam.columns, {})

    @app.command("get", help=f"Show one {fam.title} as JSON.")
    def get(
        ctx: typer.Context,
        oid: Annotated[str, id_arg],
        reveal: Annotated[bool, typer.Option("--reveal", help=_REVEAL_HELP)] = False,
    ) -> None:
        params = {"reveal": "true"} if reveal else None
        show_call(ctx, "GET", f"{fam.path}/{segment(oid)}", params)

    @app.command("delete", help=f"Delete a {fam.title}.")
    def delete(ctx: typer.Context, oid: Annotated[str, id_arg]) -> None:
        show_call(ctx, "DELETE", f"{fam.path}/{segment(oid)}")

    @app.command("enable", help=f"Enable a {fam.title} (clear its disabled flag).")
    def enable(ctx: typer.Context, oid: Annotated[str, id_arg]) -> None:
        show_call(ctx, "POST", f"{fam.path}/{segment(oid)}/enable")

    @app.command("disable", help=f"Disable a {fam.title}.")
    def disable(ctx: typer.Context, oid: Annotated[str, id_arg]) -> None:
        show_call(ctx, "POST", f"{fam.path}/{segment(oid)}/disable")


def _family(command: str) -> Family:
    return next(fam for fam in FAMILIES if fam.command == command)


def _filtered_lists(apps: dict[str, typer.Typer]) -> None:
    provider, vk, cred = _family("provider"), _family("virtualkey"), _family("credential")

    @apps["provider"].command("list", help=_LIST_HELP.format(provider.title))
    def list_providers(
        ctx: typer.Context,
        provider_type: Annotated[
            str | None, typer.Option("--provider-type", help="Only this provider type.")
        ] = None,
    ) -> None:
        show_list(ctx, provider.path, provider.columns, {"provider_type": provider_type})

    @apps["virtualkey"].command("list", help=_LIST_HELP.format(vk.title))
    def list_virtual_keys(
        ctx: typer.Context,
        tag: Annotated[str | None, typer.Option("--tag", help="Only keys with this tag.")] = None,
    ) -> None:
        show_list(ctx, vk.path, vk.columns, {"tag": tag})

    @apps["credential"].command("list", help=_LIST_HELP.format(cred.title))
    def list_credentials(
        ctx: typer.Context,
        type_: Annotated[
            str | None,
            typer.Option("--type", help="Only this credential type: api_key or cliauth_token."),
        ] = None,
        provider_type: Annotated[
            str | None, typer.Option("--provider-type", help="Only this provider type.")
        ] = None,
        provider_id: Annotated[
            str | None, typer.Option("--provider-id", help="Only this provider id.")
        ] = None,
    ) -> None:
        filters = {"type": type_, "provider_type": provider_type, "provider_id": provider_id}
        show_list(ctx, cred.path, cred.columns, filters)


# ---------------------------------------------------------------------------- managed models

MANAGED = "/admin/llm/models/managed"
ProviderArg = Annotated[
    str, typer.Argument(metavar="PROVIDER_ID", help="The provider id.", show_default=False)
]
ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="UPSTREAM_MODEL",
        help="The upstream model name (may contain '/').",
        show_default=False,
    ),
]


def _managed_path(provider_id: str, model: str) -> str:
    return f"{MANAGED}/{segment(provider_id)}/{segment(model, keep_slashes=True)}"


def model_app() -> typer.Typer:
    app = typer.Typer(help="LLM models.", no_args_is_help=True, rich_markup_mode=None)
    managed = typer.Typer(
        help=f"Manage managed models ({MANAGED}).", no_args_is_help=True, rich_markup_mode=None
    )
    app.add_typer(managed, name="managed")

    @managed.command("list", help=_LIST_HELP.format("managed model"))
    def list_managed(
        ctx: typer.Context,
        provider_id: Annotated[
            str | None, typer.Option("--provider-id", help="Only this provider's models.")
        ] = None,
    ) -> None:
        show_list(ctx, MANAGED, MANAGED_MODEL_COLUMNS, {"provider_id": provider_id})

    @managed.command("get", help="Show one managed model as JSON.")
    def get_managed(ctx: typer.Context, provider_id: ProviderArg, model: ModelArg) -> None:
        show_call(ctx, "GET", _managed_path(provider_id, model))

    @managed.command("delete", help="Delete a managed model.")
    def delete_managed(ctx: typer.Context, provider_id: ProviderArg, model: ModelArg) -> None:
        show_call(ctx, "DELETE", _managed_path(provider_id, model))

    @managed.command("enable", help="Enable a managed model.")
    def enable_managed(ctx: typer.Context, provider_id: ProviderArg, model: ModelArg) -> None:
        show_call(ctx, "POST", _managed_path(provider_id, model) + "/enable")

    @managed.command("disable", help="Disable a managed model.")
    def disable_managed(ctx: typer.Context, provider_id: ProviderArg, model: ModelArg) -> None:
        show_call(ctx, "POST", _managed_path(provider_id, model) + "/disable")

    discovered = typer.Typer(
        help="Models a provider says it serves (discovery snapshots, in memory).",
        no_args_is_help=True,
        rich_markup_mode=None,
    )
    app.add_typer(discovered, name="discovered")

    def _discovery(provider_id: str) -> str:
        return f"/admin/llm/models/providers/{segment(provider_id)}"

    @discovered.command("list", help="List the last discovered models of a provider.")
    def list_discovered(ctx: typer.Context, provider_id: ProviderArg) -> None:
        show_list(ctx, _discovery(provider_id) + "/discovered", DISCOVERED_COLUMNS, {})

    @discovered.command("refresh", help="Ask the provider for its models now, then list them.")
    def refresh_discovered(ctx: typer.Context, provider_id: ProviderArg) -> None:
        with admin(ctx) as client:
            result = client.call("POST", _discovery(provider_id) + "/refresh")
        items = result.get("items", []) if isinstance(result, dict) else []
        if state(ctx).json:
            render.print_json(result)
        else:
            headers = [name for name, _ in DISCOVERED_COLUMNS]
            render.print_table(headers, render.rows_of(items, DISCOVERED_COLUMNS))

    return app


# -------------------------------------------------------------------------------- registries


def provider_type_app() -> typer.Typer:
    app = typer.Typer(
        help="Provider types this gateway knows, and whether each is enabled.",
        no_args_is_help=True,
        rich_markup_mode=None,
    )
    columns = (_col("PROVIDER-TYPE", "provider_type"), _col("ENABLED", "enabled"))

    @app.command("list", help="List provider types (GET /admin/llm/provider_types).")
    def list_types(ctx: typer.Context) -> None:
        show_list(ctx, "/admin/llm/provider_types", columns, {})

    return app


def handler_type_app() -> typer.Typer:
    app = typer.Typer(
        help="LLM API handler types (route protocols).", no_args_is_help=True, rich_markup_mode=None
    )
    columns = (_col("LLM-API-HANDLER-TYPE", "llm_api_handler_type"),)

    @app.command("list", help="List LLM API handler types (GET /admin/llm/api_handler_types).")
    def list_handlers(ctx: typer.Context) -> None:
        show_list(ctx, "/admin/llm/api_handler_types", columns, {})

    return app


def cliauth_app() -> typer.Typer:
    app = typer.Typer(help="CLI-auth login flows.", no_args_is_help=True, rich_markup_mode=None)
    auth = typer.Typer(
        help="CLI-auth authenticators (/admin/cliauth/authenticators).",
        no_args_is_help=True,
        rich_markup_mode=None,
    )
    app.add_typer(auth, name="authenticators")
    path = "/admin/cliauth/authenticators"
    columns = (_col("NAME", "name"), _col("ENABLED", "enabled"), _col("CONFIG", "config"))

    @auth.command("list", help="List authenticators (a table; -o json for JSON).")
    def list_authenticators(ctx: typer.Context) -> None:
        show_list(ctx, path, columns, {})

    @auth.command("get", help="Show one authenticator as JSON.")
    def get_authenticator(
        ctx: typer.Context,
        name: Annotated[str, typer.Argument(metavar="NAME", help="codex, claudecode or gemini.")],
    ) -> None:
        show_call(ctx, "GET", f"{path}/{segment(name)}")

    return app


def register(gateway: typer.Typer) -> dict[str, typer.Typer]:
    """Add every resource group to the ``gateway`` group; returns the family groups by command
    name, for the planes that add commands to them (:mod:`agwctl.mcp`)."""
    apps = {fam.command: family_app(fam) for fam in FAMILIES}
    _filtered_lists(apps)
    for fam in FAMILIES:
        add_verbs(fam, apps[fam.command])
        gateway.add_typer(apps[fam.command], name=fam.command)
    gateway.add_typer(model_app(), name="model")
    gateway.add_typer(provider_type_app(), name="provider-type")
    gateway.add_typer(handler_type_app(), name="llm-api-handler-type")
    gateway.add_typer(cliauth_app(), name="cliauth")
    return apps
