"""The data-plane dispatcher: a lean ASGI app over the runtime snapshot.

Per request: take the snapshot once -> match the route (longest path prefix, then host, then
method) -> strip the prefix -> trace headers -> ``Host`` and ``Origin`` (:class:`EdgeCheck`) ->
malformed trace headers -> agent-depth gate -> disabled route -> virtual key -> the route kind's
plane, which answers in its caller's dialect and records one usage event (rejections included).
No database read happens here.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Protocol

from agw.asgi import Receive, Rejection, Request, Scope, Send, TraceContext, current_trace
from agw.edge import HostPolicy
from agw.llm.handler import LlmPlane, Reply
from agw.runtime.manager import ConfigManager
from agw.runtime.sessions import SessionDirectory
from agw.runtime.snapshot import CompiledRoute, Snapshot
from agw.usage.accesslog import AccessLog

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
# agwd's own start-up probe of its listeners: not an access-log line
READINESS_HEADER = "x-agw-readiness-probe"


class Plane(Protocol):
    """What serves one route kind (mcp, acp): answers every request of its routes, rejections
    included, in its own dialect, and records the usage event."""

    async def handle(self, req: Request, rejection: Rejection | None) -> None: ...

    async def close(self) -> None: ...


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name = raw_name.decode("latin-1").lower()
        value = raw_value.decode("latin-1")
        out[name] = f"{out[name]}, {value}" if name in out else value
    return out


def virtual_key_candidates(headers: dict[str, str]) -> list[str]:
    """``x-api-key`` first, then ``Authorization: Bearer``; de-duplicated, empties skipped."""
    found: list[str] = []
    api_key = headers.get("x-api-key", "").strip()
    if api_key:
        found.append(api_key)
    auth = headers.get("authorization", "")
    scheme, _, token = auth.partition(" ")
    token = token.strip()
    if scheme.lower() == "bearer" and token and token not in found:
        found.append(token)
    return found


def authenticate(
    snapshot: Snapshot,
    route: CompiledRoute,
    headers: dict[str, str],
    directory: SessionDirectory | None = None,
) -> tuple[str | None, Reply | None]:
    """The virtual key id, or the rejection. The first candidate valid for this route wins, so
    an unrelated key in the other header cannot shadow a valid one."""
    if not route.require_virtual_key:
        return None, None
    candidates = virtual_key_candidates(headers)
    if not candidates:
        return None, Reply(401, "virtual key is required", "virtual_key_rejected")
    refusal: tuple[str, Reply] | None = None
    now = datetime.now(UTC)
    for candidate in candidates:
        entry = snapshot.virtual_keys.get(candidate)
        if entry is None and directory is not None:  # a gateway-run agent's session credential
            key = directory.credential(candidate)
            entry = snapshot.virtual_keys.get(key) if key else None
        if entry is None:
            continue
        vk = entry.config
        if vk.disabled:
            message = "virtual key is disabled"
            if vk.status_message:
                message += f": {vk.status_message}"
            reply = Reply(403, message, "virtual_key_rejected")
        elif vk.expires_at is not None and vk.expires_at <= now:
            reply = Reply(403, "virtual key is expired", "virtual_key_rejected")
        elif vk.allowed_route_ids and route.id not in vk.allowed_route_ids:
            reply = Reply(
                403, "virtual key is not allowed to access this route", "virtual_key_rejected"
            )
        else:
            return entry.id, None
        refusal = refusal or (entry.id, reply)
    if refusal is not None:
        return refusal
    return None, Reply(401, "invalid virtual key", "virtual_key_rejected")


class EdgeCheck:
    """The data listener's ``Host`` and ``Origin`` rules (agw.edge), for the routes a browser
    page could use: every open route (no virtual key), and every MCP and ACP route (a browser
    may hold a session there). A keyed LLM route is not checked: a page cannot supply the key.

    A route's own match host is trusted for that route. The answers are memoized per header
    value (bounded), so a request pays a dict lookup, not a parse."""

    MEMO_MAX = 1024

    __slots__ = ("_hosts", "_origins", "_policies", "policy")

    def __init__(self, policy: HostPolicy) -> None:
        self.policy = policy
        self._policies: dict[str, HostPolicy] = {"": policy}
        self._hosts: dict[str, bool] = {}
        self._origins: dict[tuple[str, str, str, str], bool] = {}

    def _for_route(self, route_host: str) -> HostPolicy:
        policy = self._policies.get(route_host)
        if policy is None:  # route hosts come from the config: bounded
            hosts = self.policy.allowed_hosts | {route_host}
            policy = self._policies[route_host] = dataclasses.replace(
                self.policy, allowed_hosts=hosts
            )
        return policy

    def refusal(self, route: CompiledRoute, headers: dict[str, str], scheme: str) -> Reply | None:
        host = headers.get("host", "")
        if not route.host:  # a route with a match host only matched a Host naming it
            trusted = self._hosts.get(host)
            if trusted is None:
                if len(self._hosts) >= self.MEMO_MAX:
                    self._hosts.clear()
                trusted = self._hosts[host] = self.policy.host_allowed(host)
            if not trusted:
                return Reply(
                    421,
                    f"Host {host[:100]!r} is not served here (see --allowed-host)",
                    "host_not_allowed",
                )
        origin = headers.get("origin")
        if origin is None:
            return None
        key = (route.host, origin, host, scheme)
        allowed = self._origins.get(key)
        if allowed is None:
            if len(self._origins) >= self.MEMO_MAX:
                self._origins.clear()
            policy = self._for_route(route.host)
            allowed = self._origins[key] = policy.origin_allowed(origin, host, scheme)
        if allowed:
            return None
        return Reply(
            403,
            f"Origin {origin[:100]!r} is not allowed (see --allowed-origin)",
            "origin_not_allowed",
        )


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
    llm: LlmPlane,
    *,
    max_agent_depth: int = 0,
    planes: dict[str, Plane] | None = None,
    directory: SessionDirectory | None = None,
    access_log: AccessLog | None = None,
    policy: HostPolicy | None = None,
) -> ASGIApp:
    """``planes``: the handlers of the other route kinds (``mcp``, ``acp``); a kind without one
    answers 501. ``access_log`` gets a line for each request no route matches (the planes'
    requests reach it through the usage recorder). ``policy``: the data listener's trusted
    ``Host`` names and ``Origin`` values (default: loopback names and IP literals only)."""
    others = dict(planes or {})
    edge = EdgeCheck(policy or HostPolicy())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await llm.close()
                    for plane in others.values():
                        await plane.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        snapshot = manager.snapshot
        headers = _headers(scope)
        path: str = scope["path"]
        method: str = scope["method"]
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
        rejection: Reply | None = None
        if route.kind != "llm" or not route.require_virtual_key:
            rejection = edge.refusal(route, headers, scope.get("scheme", "http"))
        if rejection is not None:
            pass
        elif trace.invalid is not None:
            rejection = Reply(400, trace.invalid, "invalid_header")
        elif max_agent_depth > 0 and trace.depth >= max_agent_depth:
            rejection = Reply(403, "agent depth limit exceeded", "agent_depth_exceeded")
        elif route.disabled:
            rejection = Reply(403, f'route "{route.id}" is disabled', "route_disabled")
        else:
            req.virtual_key_id, rejection = authenticate(snapshot, route, headers, directory)
        if route.kind == "llm":
            await llm.handle(req, rejection)
            return
        other = others.get(route.kind)
        if other is not None:
            await other.handle(
                req,
                None
                if rejection is None
                else Rejection(rejection.status, rejection.message, rejection.error_type),
            )
            return
        if rejection is not None:
            await _plain(
                send,
                rejection.status,
                rejection.message,
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
