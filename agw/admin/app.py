"""The admin API app: one Quart app, one error shape, basic auth, browser checks.

Middleware order, in one place (docs/security.md, "Admin API"): a ``Host`` the listener does not
trust -> 421; an ``Origin`` not listed with ``--admin-cors-origin`` -> 403;
OPTIONS -> 204 (public); ``GET /admin/health`` public; a write whose body is not
``application/json`` -> 415; basic auth (429 after repeated failures from one address), then the
blueprints. Every error leaves as ``{"error": ..., "code": ...}``; CORS headers go only to a
listed origin, as the operator spelled it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from quart import Quart, Response, request
from quart.wrappers import BaseRequestWebsocket
from werkzeug.exceptions import BadHost, HTTPException
from werkzeug.routing import MapAdapter

from agw.admin import acp, agents, authz, gateway, limits, mcp, metrics, models, resources
from agw.auth.admin_basic import BasicAuth
from agw.edge import HostPolicy
from agw.errors import AgwError
from agw.llm import CredentialHealth, ModelCatalog
from agw.runtime.manager import ConfigManager
from agw.settings import ADMIN_REALM, MAX_ADMIN_BODY, REVEAL_HEADER

if TYPE_CHECKING:
    from agw.acp import AcpRuntime, PermissionRegistry
    from agw.auth.identity import Identity
    from agw.mcp import McpState
    from agw.policy.limits import Limiter
    from agw.store.engine import Store
    from agw.usage.recorder import UsageRecorder

log = logging.getLogger(__name__)

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_MEDIA_TYPE = "application/json"
CORS_METHODS = "GET, POST, PUT, DELETE, OPTIONS"
CORS_HEADERS = f"Authorization, Content-Type, {REVEAL_HEADER}"


def _json(body: dict[str, Any], status: int, headers: dict[str, str] | None = None) -> Response:
    import json

    return Response(
        json.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def _client() -> str:
    return request.remote_addr or ""


def _refuse(
    status: int, message: str, code: str, headers: dict[str, str] | None = None
) -> Response:
    """An answer given before the handler ran (the body, if any, is left unread)."""
    extra = {"Connection": "close"} if _body_left_unread() else {}
    return _json({"error": message, "code": code}, status, (headers or {}) | extra)


def _body_left_unread() -> bool:
    """An answer given before the handler read the body (auth, routing errors) leaves the body
    on the wire, and hypercorn then drops the connection: tell the client not to reuse it."""
    length = request.headers.get("Content-Length", "")
    return length not in ("", "0") or "Transfer-Encoding" in request.headers


def json_body_refused() -> str | None:
    """Why a write's body is refused: anything but ``application/json`` (a page can send
    ``text/plain`` and form bodies cross-site without a preflight), or a body with no type."""
    types = request.headers.getlist("Content-Type")
    if not types:
        return "a request body must be application/json" if _body_left_unread() else None
    media = types[0].partition(";")[0].strip().lower()
    if len(types) > 1 or media != JSON_MEDIA_TYPE:
        return f"request body must be {JSON_MEDIA_TYPE} (got {types[0][:100]!r})"
    return None


class _AdminQuart(Quart):
    """Quart, with a ``Host`` werkzeug cannot encode (``localhost..``: an empty label) left to
    the gate, which answers 421: werkzeug refuses it while the request context is built, before
    any handler could, and the client got a 500 with a traceback in the log."""

    def create_url_adapter(self, request: BaseRequestWebsocket | None) -> MapAdapter | None:
        try:
            return super().create_url_adapter(request)
        except BadHost:
            return self.url_map.bind("invalid.host", url_scheme="http")


def create_admin_app(
    manager: ConfigManager,
    auth: BasicAuth | None,
    catalog: ModelCatalog | None = None,
    health: CredentialHealth | None = None,
    mcp_runtime: McpState | None = None,
    *,
    acp_runtime: AcpRuntime | None = None,
    acp_permissions: PermissionRegistry | None = None,
    recorder: UsageRecorder | None = None,
    db: Store | None = None,
    prometheus: metrics.Exposition | None = None,
    policy: HostPolicy | None = None,
    identity: Identity | None = None,
    limiter: Limiter | None = None,
) -> Quart:
    """``catalog`` and ``health`` are the LLM plane's model snapshots and credential states,
    shown in the views when given; ``mcp_runtime`` is the MCP plane's, which the
    ``/admin/mcp/services/{id}/...`` calls and ``/admin/mcp/runtime`` views use (without it they
    answer 404). ``acp_runtime`` and ``acp_permissions`` are the ACP plane's, for the
    ``/admin/acp/services/{id}/sessions...`` calls and ``/admin/acp/runtime...`` (without the
    runtime they answer 404); ``recorder`` receives their audit rows (none without it) and
    gives the metrics summary its pipeline counters. ``db`` holds the usage tables the
    ``/admin/metrics/...`` reads query (without it they answer empty shapes); ``prometheus``
    renders ``/admin/metrics/prometheus`` (without it: 503). ``policy`` is what the listener
    trusts in ``Host`` and ``Origin`` (default: loopback names, no listed origin); ``auth`` None
    serves without authentication (``--admin-insecure``). ``identity`` is the data plane's
    identity step, for ``/admin/auth/explain`` (without it a route that needs a credential
    answers 404 there). ``limiter`` holds the limit counters ``GET /admin/limits`` shows and
    ``POST /admin/limits/{id}/reset`` zeroes (without it: no subjects, nothing to reset)."""
    trust = policy or HostPolicy()
    app = _AdminQuart(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = MAX_ADMIN_BODY
    app.config["BODY_TIMEOUT"] = 60
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep model field order

    @app.before_request
    async def gate() -> Response | None:
        host = request.headers.get("Host", "")
        if len(request.headers.getlist("Host")) > 1 or not trust.host_allowed(host):
            log.info("admin_host_refused", extra={"host": host[:200], "client": _client()})
            return _refuse(421, f"host {host[:100]!r} is not served here", "misdirected_request")
        origin = request.headers.get("Origin")
        # only listed origins, not even the listener's own: the admin API serves no pages, and
        # on a listener shared with the data plane a page there would be its own origin
        if origin is not None and trust.cors_origin(origin) is None:
            log.info("admin_origin_refused", extra={"origin": origin[:200], "client": _client()})
            return _refuse(403, f"origin {origin[:100]!r} is not allowed", "origin_not_allowed")
        if request.method == "OPTIONS":
            response = Response("", status=204)
            del response.headers["Content-Type"]
            if _body_left_unread():
                response.headers["Connection"] = "close"
            return response
        if request.method == "GET" and request.path == "/admin/health":
            return None
        if request.method in WRITE_METHODS and (why := json_body_refused()):
            return _refuse(415, why, "unsupported_media_type")
        if auth is None:
            return None
        verdict = await auth.check(request.headers.get("Authorization"), _client())
        if verdict.ok:
            return None
        if verdict.retry_after_s:
            log.warning("admin_auth_throttled", extra={"path": request.path, "client": _client()})
            return _refuse(
                429,
                "too many failed logins from this address; retry later",
                "too_many_requests",
                {"Retry-After": str(verdict.retry_after_s)},
            )
        log.info("admin_auth_failed", extra={"path": request.path, "client": _client()})
        return _refuse(
            401,
            "unauthorized",
            "unauthorized",
            {"WWW-Authenticate": f'Basic realm="{ADMIN_REALM}"'},
        )

    @app.after_request
    async def cors(response: Response) -> Response:
        response.headers["X-Content-Type-Options"] = "nosniff"
        origin = request.headers.get("Origin")
        if origin is None:
            return response
        response.headers["Vary"] = "Origin"
        allowed = trust.cors_origin(origin)
        if allowed is not None:
            response.headers["Access-Control-Allow-Origin"] = allowed
            response.headers["Access-Control-Allow-Methods"] = CORS_METHODS
            response.headers["Access-Control-Allow-Headers"] = CORS_HEADERS
            response.headers["Access-Control-Max-Age"] = "86400"
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
    authz.register(app, manager, identity)
    limits.register(app, manager, limiter)
    return app
