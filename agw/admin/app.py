"""The admin API app: one Quart app, one error shape, basic auth, CORS.

Middleware order, in one place: OPTIONS -> 204 (public), ``GET /admin/health`` public, basic
auth for everything else, then the blueprints; every error leaves as ``{"error": ..., "code":
...}``; CORS headers are added to every answer that came with an ``Origin``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from agw.admin import acp, agents, gateway, mcp, metrics, models, resources
from agw.auth.admin_basic import BasicAuth
from agw.errors import AgwError
from agw.llm.credstate import CredentialHealth
from agw.llm.discovery import ModelCatalog
from agw.runtime.manager import ConfigManager
from agw.settings import ADMIN_REALM, MAX_ADMIN_BODY

if TYPE_CHECKING:
    from agw.acp.permissions import PermissionRegistry
    from agw.acp.runtime import AcpRuntime
    from agw.mcp.runtime import McpRuntime
    from agw.store.db import Database
    from agw.usage.recorder import UsageRecorder

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    import json

    return Response(
        json.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def _body_left_unread() -> bool:
    """An answer given before the handler read the body (auth, routing errors) leaves the body
    on the wire, and hypercorn then drops the connection: tell the client not to reuse it."""
    length = request.headers.get("Content-Length", "")
    return length not in ("", "0") or "Transfer-Encoding" in request.headers


def create_admin_app(
    manager: ConfigManager,
    auth: BasicAuth | None,
    catalog: ModelCatalog | None = None,
    health: CredentialHealth | None = None,
    mcp_runtime: McpRuntime | None = None,
    *,
    acp_runtime: AcpRuntime | None = None,
    acp_permissions: PermissionRegistry | None = None,
    recorder: UsageRecorder | None = None,
    db: Database | None = None,
    prometheus: metrics.Exposition | None = None,
) -> Quart:
    """``catalog`` and ``health`` are the LLM plane's model snapshots and credential states,
    shown in the views when given; ``mcp_runtime`` is the MCP plane's, which the
    ``/admin/mcp/services/{id}/...`` calls and ``/admin/mcp/runtime`` views use (without it they
    answer 404). ``acp_runtime`` and ``acp_permissions`` are the ACP plane's, for the
    ``/admin/acp/services/{id}/sessions...`` calls and ``/admin/acp/runtime...`` (without the
    runtime they answer 404); ``recorder`` receives their audit rows (none without it) and
    gives the metrics summary its pipeline counters. ``db`` holds the usage tables the
    ``/admin/metrics/...`` reads query (without it they answer empty shapes); ``prometheus``
    renders ``/admin/metrics/prometheus`` (without it: 503)."""
    app = Quart(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_ADMIN_BODY
    app.config["BODY_TIMEOUT"] = 60
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep model field order

    @app.before_request
    async def gate() -> Response | None:
        if request.method == "OPTIONS":
            response = Response("", status=204)
            del response.headers["Content-Type"]
            if _body_left_unread():
                response.headers["Connection"] = "close"
            return response
        if request.method == "GET" and request.path == "/admin/health":
            return None
        if auth is not None and not await auth.check(request.headers.get("Authorization")):
            log.info("admin_auth_failed", extra={"path": request.path})
            return _json(
                {"error": "unauthorized", "code": "unauthorized"},
                401,
                {"WWW-Authenticate": f'Basic realm="{ADMIN_REALM}"'}
                | ({"Connection": "close"} if _body_left_unread() else {}),
            )
        return None

    @app.after_request
    async def cors(response: Response) -> Response:
        origin = request.headers.get("Origin")
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, DELETE, OPTIONS"
            response.headers["Access-Control-Allow-Headers"] = "Authorization, Content-Type"
            response.headers["Access-Control-Max-Age"] = "86400"
            response.headers["Vary"] = "Origin"
        return response

    @app.errorhandler(AgwError)
    async def agw_error(exc: AgwError) -> Response:
        if exc.status >= 500:
            log.error("admin_request_failed", extra={"path": request.path, "error": exc.message})
        return _json(resources.family_error(exc), exc.status)

    @app.errorhandler(HTTPException)
    async def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 404:
            message = f"no admin endpoint at {request.path}"
        elif status == 405:
            message = f"method {request.method} not allowed on {request.path}"
        elif status == 413:
            message = f"request body larger than {MAX_ADMIN_BODY} bytes"
        else:
            message = exc.description or exc.name
        # A body too large, or never read (routing errors), leaves the connection unusable.
        headers = {"Connection": "close"} if status == 413 or _body_left_unread() else None
        body = {"error": message, "code": _HTTP_CODES.get(status, "http_error")}
        return _json(body, status, headers)

    @app.errorhandler(Exception)
    async def internal(exc: Exception) -> Response:
        log.exception("admin_internal_error", extra={"path": request.path})
        return _json({"error": "internal error", "code": "internal_error"}, 500)

    gateway.register(app, manager)
    resources.register(app, manager, catalog, health)
    if catalog is not None:
        models.register(app, manager, catalog)
    mcp.register(app, manager, mcp_runtime)
    acp.register(app, manager, acp_runtime, acp_permissions, recorder)
    metrics.register(app, db, recorder, prometheus)
    agents.register(app, manager, db, acp_runtime, acp_permissions, recorder)
    return app
