"""The data-plane dispatcher: steps 1 to 3 of the request pipeline, then the route's plane.

Per request: take the snapshot once -> the MCP OAuth documents and registration shim
(agw/auth/oauth_metadata.py: well-known paths, answered before any route) -> match the route
(longest path prefix, then host, then method) -> strip the prefix -> trace headers -> ``Host`` and
``Origin`` (:class:`EdgeCheck`) -> malformed trace headers -> the policy gates that need no
identity (agent depth, disabled route: agw/policy) -> identity (virtual keys and JWTs:
agw/auth/identity.py) -> ``planes[route.kind]``, which answers in its caller's dialect and records
one usage event, refusals included. The dispatcher renders nothing but its own 404 and 501; it
knows no plane by name. No database read happens here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Protocol

from agw.auth.identity import Identity
from agw.auth.oauth_metadata import PATHS as OAUTH_PATHS
from agw.auth.oauth_metadata import OAuthEndpoints
from agw.edge import EdgeCheck, HostPolicy
from agw.errors import Refusal
from agw.policy import RouteGates
from agw.policy.limits import Limiter
from agw.request import Request, TraceContext, current_client_token, current_trace
from agw.runtime.attribution import SessionDirectory, attribute
from agw.runtime.manager import ConfigManager
from agw.types import ASGIApp, Receive, Scope, Send
from agw.usage.accesslog import AccessLog

# agwd's own start-up probe of its listeners: not an access-log line
READINESS_HEADER = "x-agw-readiness-probe"


class Plane(Protocol):
    """What serves one route kind (``llm``, ``mcp``, ``acp``): step 4 of the pipeline. It
    answers every request of its routes, the dispatcher's refusals included (rendered in its
    own dialect), and records one usage event per request."""

    # Every route of this kind checks Host and Origin, even one that needs a virtual key: a
    # browser page may hold a session there. Otherwise only routes open to anyone are checked
    # (a page cannot supply the key).
    edge_always: bool

    async def handle(self, req: Request, refusal: Refusal | None) -> None: ...

    async def close(self) -> None: ...


def _headers(scope: Scope) -> dict[str, str]:
    """The request's headers by lower-case name; a repeated header's values joined with ", "
    (built in one comprehension: only a request that repeats a name takes the loop)."""
    raw = scope["headers"]
    if type(raw) is not list:  # an iterable, by the ASGI spec: uvicorn and hypercorn give lists
        raw = list(raw)
    out = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in raw}
    if len(out) == len(raw):
        return out
    out = {}
    for raw_name, raw_value in raw:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


async def _plain(send: Send, status: int, message: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def create_data_app(
    manager: ConfigManager,
    planes: Mapping[str, Plane],
    *,
    max_agent_depth: int = 0,
    directory: SessionDirectory | None = None,
    access_log: AccessLog | None = None,
    policy: HostPolicy | None = None,
    identity: Identity | None = None,
    limiter: Limiter | None = None,
) -> ASGIApp:
    """``planes``: the plane of each route kind; a kind without one answers 501. ``directory``:
    the gateway-run agents' sessions, for the identity step (a session credential stands for
    its key) and attribution. ``access_log`` gets a line for each request no route matches (the
    planes' requests reach it through the usage recorder). ``policy``: the data listener's
    trusted ``Host`` names and ``Origin`` values (default: loopback names and IP literals
    only). ``identity``: the identity step (default: one of its own, closed with the app).
    ``limiter``: the limit counters the planes admit against (docs/limits.md): their saved
    state is loaded at start-up and saved at shutdown here."""
    planes = dict(planes)
    ident = identity or Identity(directory)
    manager.on_swap(ident.sync)
    if limiter is not None:
        manager.on_swap(lambda snapshot: limiter.sync(snapshot.limits))
    edge = EdgeCheck(policy or HostPolicy())
    oauth = OAuthEndpoints(edge)  # MCP OAuth metadata and the registration shim
    gates = RouteGates(max_agent_depth)
    edge_always = {kind for kind, plane in planes.items() if plane.edge_always}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    ident.sync(manager.snapshot)  # JWT providers start fetching their keys
                    if limiter is not None:  # before the first request: a day's spend so far
                        await limiter.start(manager.snapshot.limits)
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    for plane in planes.values():
                        await plane.close()
                    await ident.close()
                    await oauth.close()
                    if limiter is not None:
                        await limiter.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        snapshot = manager.snapshot
        headers = _headers(scope)
        path: str = scope["path"]
        method: str = scope["method"]
        if path.startswith(OAUTH_PATHS) and await oauth.serve(
            scope, receive, send, snapshot, headers
        ):
            return
        route = snapshot.match(headers.get("host", ""), path, method)
        if route is None:
            unread = [] if method in ("GET", "HEAD") else [(b"connection", b"close")]
            await _plain(send, 404, f"no route matches {path}", unread)
            if access_log is not None and READINESS_HEADER not in headers:
                access_log.unmatched(method, path, 404)
            return
        trace = TraceContext.from_headers(headers)
        current_trace.set(trace)
        stripped = path[len(route.path_prefix) :]
        if not stripped.startswith("/"):
            stripped = "/" + stripped
        req = Request(scope, receive, send, snapshot, route, stripped, method, headers, trace)
        req.session_id, req.acp_session_id = attribute(headers, directory)
        # step 1, the edge; then the policy gates that need no identity (step 3, agw/policy);
        # then step 2, identity
        refusal: Refusal | None = None
        if not route.needs_credential or route.kind in edge_always:
            refusal = edge.refusal(route.host, headers, scope.get("scheme", "http"))
        if refusal is not None:
            pass
        elif trace.invalid is not None:
            refusal = Refusal(400, "invalid_header", trace.invalid)
        else:
            refusal = gates.refusal(route, trace.depth)
            if refusal is None and route.needs_credential:
                req.principal, refusal = await ident.authenticate(
                    snapshot,
                    route,
                    headers,
                    scope.get("scheme", "http"),
                    scope.get("query_string", b""),
                )
                current_client_token.set(req.principal.token)
        handler = planes.get(route.kind)
        if handler is not None:
            await handler.handle(req, refusal)
            return
        if refusal is not None:
            await _plain(
                send,
                refusal.status,
                refusal.message,
                trace.response_headers() + req.close_if_unread(),
            )
            return
        await _plain(
            send,
            501,
            f'route "{route.id}": {route.kind} routes are not served by this build yet',
            trace.response_headers() + req.close_if_unread(),
        )

    return app
