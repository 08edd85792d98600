"""MCP endpoints beyond CRUD (reference §5.8): discovery and calls on one service through the
runtime's admin session, and views of the MCP plane's runtime state.

Services and routes themselves are generic families (:mod:`agw.admin.resources`). Every call
here goes through ``runtime.admin_upstream(service)``: one gateway-owned upstream session per
service (for a stdio service, the shared process), never a client's session.

Errors: an unknown service is ``404 mcp service not found``; a disabled one ``409 conflict``
(nothing is started for it); an upstream that cannot be reached, dies or answers a JSON-RPC
error is ``502 upstream_failed``, with the JSON-RPC error's code in the message.
"""

from __future__ import annotations

from typing import Any

from quart import Quart, request

from agw.admin.resources import JSONResponse, json_body
from agw.config.mcp import McpService
from agw.errors import Conflict, InvalidRequest, NotFound, UpstreamFailed
from agw.mcp import METHOD_NOT_FOUND, McpState, RpcError, UpstreamError
from agw.runtime.manager import ConfigManager
from agw.types import JsonObj

# A call made for the admin API waits this long for the upstream (Quart's own response
# timeout is 60 s, so the admin gets a 502 with a reason instead of a cut connection).
ADMIN_CALL_TIMEOUT_S = 55.0
# What the upstream result key is for each list endpoint.
_LISTS = {
    "tools": ("tools/list", "tools"),
    "resources": ("resources/list", "resources"),
    "resource-templates": ("resources/templates/list", "resourceTemplates"),
    "prompts": ("prompts/list", "prompts"),
}
_HINTS = {
    "resources/list": "this service may not offer resources; try tools/list",
    "resources/templates/list": "this service may not offer resource templates; try tools/list",
    "resources/read": "this service may not offer resources; try tools/list",
    "prompts/list": "this service may not offer prompts; try tools/list",
    "prompts/get": "this service may not offer prompts; try tools/list",
}


def _only(body: dict[str, Any], *allowed: str) -> None:
    unknown = set(body) - set(allowed)
    if unknown:
        raise InvalidRequest(f"unknown field {sorted(unknown)[0]!r}; expected {', '.join(allowed)}")


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{name} is required (a non-empty string)")
    return value


def _arguments(body: dict[str, Any], *, strings: bool) -> JsonObj | None:
    value = body.get("arguments")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidRequest(f"arguments must be a JSON object, not {type(value).__name__}")
    if strings:
        for key, item in value.items():
            if not isinstance(item, str):
                raise InvalidRequest(f"arguments.{key} must be a string (prompt arguments are)")
    return value


def upstream_failure(service_id: str, method: str, exc: RpcError | UpstreamError) -> UpstreamFailed:
    """The admin error for an upstream that failed a call: 502, with the JSON-RPC code when the
    upstream answered one (and a hint for the optional features)."""
    if isinstance(exc, UpstreamError):
        return UpstreamFailed(f"mcp service {service_id} failed: {exc.message}")
    message = f"mcp service {service_id} answered {method} with error {exc.code}: {exc.message}"
    if exc.code == METHOD_NOT_FOUND and method in _HINTS:
        message += f" ({_HINTS[method]})"
    return UpstreamFailed(message)


def register(app: Quart, manager: ConfigManager, runtime: McpState | None) -> None:
    service_base = "/admin/mcp/services/<oid>"
    runtime_base = "/admin/mcp/runtime"

    def _runtime() -> McpState:
        if runtime is None:
            raise NotFound("the MCP plane is not running on this gateway")
        return runtime

    def _service(oid: str) -> McpService:
        service: McpService | None = manager.snapshot.mcp_services.get(oid)
        if service is None:
            raise NotFound("mcp service not found")
        return service

    def _enabled(oid: str) -> McpService:
        service = _service(oid)
        if service.disabled:
            raise Conflict(f'mcp service "{oid}" is disabled; enable it first')
        return service

    async def _call(service: McpService, method: str, params: JsonObj | None) -> Any:
        mcp = _runtime()
        try:
            upstream = await mcp.admin_upstream(service)
            return await upstream.request(method, params, timeout=ADMIN_CALL_TIMEOUT_S)
        except (RpcError, UpstreamError) as exc:
            raise upstream_failure(service.id, method, exc) from None

    async def _object(service: McpService, method: str, params: JsonObj) -> JSONResponse:
        result = await _call(service, method, params)
        if not isinstance(result, dict):
            raise UpstreamFailed(
                f"mcp service {service.id} answered {method} with a non-object result"
            )
        return result, 200

    # ---------------------------------------------------------------------- one service

    async def capabilities(oid: str) -> JSONResponse:
        service = _enabled(oid)
        mcp = _runtime()
        try:
            upstream = await mcp.admin_upstream(service)
        except (RpcError, UpstreamError) as exc:
            raise upstream_failure(oid, "initialize", exc) from None
        return dict(upstream.init_result or {}), 200

    async def sessions(oid: str) -> JSONResponse:
        _service(oid)
        return {"session": _runtime().session_view(oid)}, 200

    def lister(kind: str) -> Any:
        method, key = _LISTS[kind]

        async def list_(oid: str) -> JSONResponse:
            service = _enabled(oid)
            cursor = request.args.get("cursor")
            result = await _call(service, method, {"cursor": cursor} if cursor else None)
            items = result.get(key) if isinstance(result, dict) else None
            if not isinstance(items, list):
                raise UpstreamFailed(f"mcp service {oid} answered {method} without a {key} list")
            out: dict[str, Any] = {"items": items}
            if isinstance(result, dict) and result.get("nextCursor"):
                out["next_cursor"] = result["nextCursor"]
            return out, 200

        return list_

    async def call_tool(oid: str) -> JSONResponse:
        service = _enabled(oid)
        body = await json_body()
        _only(body, "name", "arguments")
        params: JsonObj = {"name": _text(body, "name")}
        arguments = _arguments(body, strings=False)
        if arguments is not None:
            params["arguments"] = arguments
        return await _object(service, "tools/call", params)

    async def read_resource(oid: str) -> JSONResponse:
        service = _enabled(oid)
        body = await json_body()
        _only(body, "uri")
        return await _object(service, "resources/read", {"uri": _text(body, "uri")})

    async def get_prompt(oid: str) -> JSONResponse:
        service = _enabled(oid)
        body = await json_body()
        _only(body, "name", "arguments")
        params: JsonObj = {"name": _text(body, "name")}
        arguments = _arguments(body, strings=True)
        if arguments is not None:
            params["arguments"] = arguments
        return await _object(service, "prompts/get", params)

    # ------------------------------------------------------------------------- runtime

    async def runtime_view() -> JSONResponse:
        return dict(_runtime().view()), 200

    async def inflight() -> JSONResponse:
        return {"items": _runtime().registry.inflight()}, 200

    async def progress() -> JSONResponse:
        return {"items": _runtime().registry.progress()}, 200

    async def history() -> JSONResponse:
        route_id = request.args.get("route_id") or None
        return {"items": _runtime().registry.history(route_id)}, 200

    async def cancel(route_id: str, request_id: str) -> JSONResponse:
        if not await _runtime().cancel(route_id, request_id):
            raise NotFound(f'no in-flight request "{request_id}" on mcp route "{route_id}"')
        return {"status": "cancelled", "route_id": route_id, "request_id": request_id}, 200

    async def downstream_sessions() -> JSONResponse:
        return {"items": _runtime().sessions()}, 200

    rules: tuple[tuple[str, str, Any, str], ...] = (
        (f"{service_base}/capabilities", "mcp_capabilities", capabilities, "GET"),
        (f"{service_base}/sessions", "mcp_service_sessions", sessions, "GET"),
        (f"{service_base}/tools", "mcp_tools", lister("tools"), "GET"),
        (f"{service_base}/tools/call", "mcp_tools_call", call_tool, "POST"),
        (f"{service_base}/resources", "mcp_resources", lister("resources"), "GET"),
        (
            f"{service_base}/resource-templates",
            "mcp_resource_templates",
            lister("resource-templates"),
            "GET",
        ),
        (f"{service_base}/resources/read", "mcp_resources_read", read_resource, "POST"),
        (f"{service_base}/prompts", "mcp_prompts", lister("prompts"), "GET"),
        (f"{service_base}/prompts/get", "mcp_prompts_get", get_prompt, "POST"),
        (runtime_base, "mcp_runtime", runtime_view, "GET"),
        (f"{runtime_base}/inflight", "mcp_runtime_inflight", inflight, "GET"),
        (f"{runtime_base}/progress", "mcp_runtime_progress", progress, "GET"),
        (f"{runtime_base}/history", "mcp_runtime_history", history, "GET"),
        (
            f"{runtime_base}/inflight/<route_id>/<path:request_id>/cancel",
            "mcp_runtime_cancel",
            cancel,
            "POST",
        ),
        ("/admin/mcp/sessions", "mcp_sessions", downstream_sessions, "GET"),
    )
    for rule, endpoint, handler, method in rules:
        app.add_url_rule(rule, endpoint, handler, methods=[method])
