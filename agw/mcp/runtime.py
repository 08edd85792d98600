"""The MCP plane's long-lived state: who owns which upstream session, the downstream sessions,
the in-flight registry, and what the admin API shows of them.

Ownership:

- a **stdio** service is one process, shared by every client and the admin API; started on
  first use, restarted by its transport when it dies, closed when the service is deleted,
  changed or disabled, or when the gateway stops;
- an **HTTP / SSE** service gets one upstream session per downstream session (created lazily,
  closed with it: DELETE, idle expiry, eviction) and one more for the admin API;
- a config swap drops every upstream whose service is gone or whose signature (transport,
  url, post_url, command, args, env, auth) changed, the name maps of changed routes, and the
  sessions of deleted routes.

A janitor (every 30 s) closes handshake and legacy sessions idle for 30 minutes, stateless
ones idle for 10, and admin upstream sessions unused for 10.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from agw.clock import now_ms
from agw.config.mcp import McpRoute, McpService
from agw.mcp.mux import NameMap
from agw.mcp.sessions import DownstreamSession, Registry, SessionStore, TokenBucket
from agw.mcp.upstream import Upstream, UpstreamError, create_upstream
from agw.types import JsonObj

if TYPE_CHECKING:
    from agw.runtime.manager import ConfigManager
    from agw.runtime.snapshot import Snapshot

log = logging.getLogger(__name__)

ADMIN_TENANT = "\x00admin"  # the admin API as a user of a shared process (never a session key)
READY_TIMEOUT_S = 30.0  # handshake with an upstream
LIST_TIMEOUT_S = 60.0  # one list page from an upstream
SESSION_IDLE_S = 1800.0
STATELESS_IDLE_S = 600.0
ADMIN_IDLE_S = 600.0
JANITOR_EVERY_S = 30.0
SESSION_LIMIT = 10_000
SESSIONS_PER_PRINCIPAL = 1_000
PER_PRINCIPAL_ENV = "AGW_MCP_SESSIONS_PER_PRINCIPAL"

# (session or None for a shared/admin upstream, the upstream, its message)
OnMessage = Callable[[DownstreamSession | None, Upstream, JsonObj], Awaitable[None]]


def per_principal_from_env(env: Mapping[str, str] | None = None) -> int:
    """``AGW_MCP_SESSIONS_PER_PRINCIPAL`` (a positive integer) or 1000; anything else is
    ignored (logged)."""
    raw = (os.environ if env is None else env).get(PER_PRINCIPAL_ENV, "").strip()
    if not raw:
        return SESSIONS_PER_PRINCIPAL
    if raw.isascii() and raw.isdigit() and 0 < int(raw) <= SESSION_LIMIT:
        return int(raw)
    log.warning("mcp_sessions_per_principal_invalid", extra={"value": raw[:40]})
    return SESSIONS_PER_PRINCIPAL


class Counters:
    """What the MCP plane dropped or evicted, for ``GET /admin/mcp/runtime`` (``counters``)."""

    def __init__(self) -> None:
        self.relayed = 0  # upstream messages delivered to a client
        self.unattributed = 0  # dropped: could not be tied to the client's own request/session
        self.rate_limited = 0  # dropped: over the session's relay rate
        self.undeliverable = 0  # dropped: the client had no stream open to receive it

    def view(self, store: SessionStore) -> JsonObj:
        return {
            "notifications_relayed": self.relayed,
            "notifications_dropped_unattributed": self.unattributed,
            "notifications_dropped_rate_limited": self.rate_limited,
            "notifications_dropped_undeliverable": self.undeliverable,
            "sessions_evicted": store.evicted,
            "sessions_refused": store.refused,
        }


def signature(service: McpService) -> tuple[Any, ...]:
    """What, when changed, makes an upstream session of the service stale."""
    return (
        service.transport,
        service.url,
        service.post_url,
        service.command,
        tuple(service.args),
        tuple(sorted(service.env.items())),
        tuple(sorted(service.auth.model_dump().items())),
    )


class McpRuntime:
    def __init__(
        self,
        manager: ConfigManager | None = None,
        *,
        session_limit: int = SESSION_LIMIT,
        per_principal: int | None = None,
    ) -> None:
        self.manager = manager
        self.registry = Registry()
        self.counters = Counters()
        self._outside: dict[str, TokenBucket] = {}  # per shared process: messages outside calls
        self.store = SessionStore(
            session_limit, per_principal_from_env() if per_principal is None else per_principal
        )
        self._shared: dict[str, Upstream] = {}  # stdio, by service id
        self._admin: dict[str, tuple[str, Upstream]] = {}  # service id -> (view id, upstream)
        self._locks: dict[str, asyncio.Lock] = {}
        self._names: dict[str, dict[str, NameMap]] = {}  # route id -> kind -> map
        self._name_locks: dict[str, dict[str, asyncio.Lock]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._janitor: asyncio.Task[None] | None = None
        self._on_message: OnMessage | None = None
        self._relay_ids = 0
        self._closed = False
        self._signatures: dict[str, tuple[Any, ...]] = {}
        if manager is not None:
            self._signatures = self._signatures_of(manager.snapshot)
            manager.on_swap(self._on_swap)

    def bind(self, on_message: OnMessage) -> None:
        """Where upstream messages that belong to no call go (the plane)."""
        self._on_message = on_message

    def next_relay_id(self) -> str:
        self._relay_ids += 1
        return f"agw-{self._relay_ids}"

    # ----------------------------------------------------------------------------- upstreams

    def _lock(self, key: str) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _ready(self, upstream: Upstream) -> Upstream:
        try:
            await asyncio.wait_for(asyncio.shield(upstream.ensure_ready()), READY_TIMEOUT_S)
        except TimeoutError:
            raise UpstreamError(
                f"mcp service {upstream.service.id} did not finish its handshake in "
                f"{READY_TIMEOUT_S:.0f} s"
            ) from None
        return upstream

    def _listener(self, session: DownstreamSession | None) -> Any:
        async def listen(upstream: Upstream, msg: JsonObj) -> None:
            if self._on_message is not None:
                try:
                    await self._on_message(session, upstream, msg)
                except Exception:
                    log.exception("mcp_upstream_message_failed")

        return listen

    async def shared(self, service: McpService) -> Upstream:
        """The stdio process of a service, ready."""
        async with self._lock(f"shared\x00{service.id}"):
            upstream = self._shared.get(service.id)
            if upstream is not None and (
                upstream.state == "closed" or signature(upstream.service) != signature(service)
            ):
                self._spawn(upstream.close())
                upstream = None
            if upstream is None:
                if self._closed:
                    raise UpstreamError("the gateway is shutting down")
                upstream = create_upstream(service, self._listener(None))
                self._shared[service.id] = upstream
        return await self._ready(upstream)

    async def upstream(self, session: DownstreamSession, service: McpService) -> Upstream:
        """The upstream session serving ``session`` for ``service``, ready."""
        if service.transport == "stdio":
            session.shared_used.add(service.id)
            process = await self.shared(service)
            process.admit(session.tenant)
            return process
        lock = session.locks.setdefault(service.id, asyncio.Lock())
        async with lock:
            upstream = session.upstreams.get(service.id)
            if upstream is not None and (
                upstream.state == "closed" or signature(upstream.service) != signature(service)
            ):
                del session.upstreams[service.id]
                self._spawn(upstream.close())
                upstream = None
            if upstream is None:
                if session.closed or self._closed:
                    raise UpstreamError("the session is closed")
                upstream = create_upstream(service, self._listener(session))
                session.upstreams[service.id] = upstream
        return await self._ready(upstream)

    async def admin_upstream(self, service: McpService) -> Upstream:
        """The gateway-owned session of a service for the admin API (stdio: the shared
        process), ready."""
        if service.transport == "stdio":
            process = await self.shared(service)
            process.admit(ADMIN_TENANT)  # its messages are no client's from now on
            return process
        async with self._lock(f"admin\x00{service.id}"):
            held = self._admin.get(service.id)
            if held is not None and (
                held[1].state == "closed" or signature(held[1].service) != signature(service)
            ):
                self._spawn(held[1].close())
                held = None
            if held is None:
                if self._closed:
                    raise UpstreamError("the gateway is shutting down")
                held = (str(uuid.uuid4()), create_upstream(service, self._listener(None)))
                self._admin[service.id] = held
        return await self._ready(held[1])

    def backend(
        self, session: DownstreamSession, services: Mapping[str, McpService], route_id: str
    ) -> SessionBackend:
        return SessionBackend(self, session, services, route_id)

    # ------------------------------------------------------------------------------ sessions

    def _start_janitor(self) -> None:
        if self._janitor is None and not self._closed:
            self._janitor = asyncio.get_running_loop().create_task(self._sweep())

    def new_session(self, era: str, route_id: str, virtual_key_id: str | None) -> DownstreamSession:
        self._start_janitor()
        session, evicted = self.store.create(era, route_id, virtual_key_id)
        if evicted is not None:
            self._spawn(evicted.close())
        return session

    def stateless(self, route_id: str, virtual_key_id: str | None) -> DownstreamSession:
        self._start_janitor()
        session, evicted = self.store.stateless(route_id, virtual_key_id)
        if evicted is not None:
            self._spawn(evicted.close())
        return session

    def find_session(self, key: str) -> DownstreamSession | None:
        return self.store.get(key)

    def outside_budget(self, service_id: str) -> TokenBucket:
        """The relay budget of a shared process's messages outside calls (searching for the
        sessions they go to costs a pass over the store)."""
        bucket = self._outside.get(service_id)
        if bucket is None:
            bucket = self._outside[service_id] = TokenBucket()
        return bucket

    def tenant_sessions(self, upstream: Upstream) -> list[DownstreamSession]:
        """The open sessions of the one tenant a shared (stdio) process has ever served, if it
        has served only one: what it sends outside calls is that tenant's."""
        tenant = upstream.sole_tenant
        if tenant is None:
            return []
        sid = upstream.service.id
        return [s for s in self.sessions_using(sid) if s.tenant == tenant]

    async def end_session(self, session: DownstreamSession) -> None:
        self.store.remove(session)
        await session.close()

    def sessions_using(self, service_id: str) -> list[DownstreamSession]:
        """Open sessions that reached the shared (stdio) process of a service."""
        return [s for s in self.store if service_id in s.shared_used and not s.closed]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_EVERY_S)
            self.expire(now_ms())

    def expire(self, now: int) -> None:
        for session in self.store:
            ttl = STATELESS_IDLE_S if session.era == "modern" else SESSION_IDLE_S
            if session.idle() and now - session.last_used_at_ms > ttl * 1000:
                self.store.remove(session)
                self._spawn(session.close())
        for sid, (_, upstream) in list(self._admin.items()):
            if now - (upstream.last_used_at_ms or upstream.created_at_ms) > ADMIN_IDLE_S * 1000:
                del self._admin[sid]
                self._spawn(upstream.close())

    # ----------------------------------------------------------------------------- name maps

    def names(self, route_id: str) -> tuple[dict[str, NameMap], dict[str, asyncio.Lock]]:
        return self._names.setdefault(route_id, {}), self._name_locks.setdefault(route_id, {})

    def invalidate_names(self, service_id: str, kind: str) -> None:
        """A service's list changed: the maps of the routes it is part of are rebuilt."""
        for maps in self._names.values():
            current = maps.get(kind)
            if current is not None and service_id in current.route.services:
                del maps[kind]

    # ------------------------------------------------------------------------- config swaps

    @staticmethod
    def _signatures_of(snapshot: Snapshot) -> dict[str, tuple[Any, ...]]:
        return {
            sid: signature(svc) for sid, svc in snapshot.mcp_services.items() if not svc.disabled
        }

    def _on_swap(self, snapshot: Snapshot) -> None:
        new = self._signatures_of(snapshot)
        stale = {sid for sid, sig in self._signatures.items() if new.get(sid) != sig}
        stale |= {sid for sid in self._shared if sid not in new}
        stale |= {sid for sid in self._admin if sid not in new}
        self._signatures = new
        closing: list[Upstream] = []
        for sid in stale:
            if sid in self._shared:
                closing.append(self._shared.pop(sid))
            if sid in self._admin:
                closing.append(self._admin.pop(sid)[1])
            self._outside.pop(sid, None)
            for session in self.store:
                if sid in session.upstreams:
                    closing.append(session.upstreams.pop(sid))
                session.shared_used.discard(sid)
            for maps in self._names.values():
                for kind, current in list(maps.items()):
                    if sid in current.route.services:
                        del maps[kind]
        routes: dict[str, McpRoute] = {r.id: r.config for r in snapshot.routes if r.kind == "mcp"}
        for rid in list(self._names):
            if rid not in routes:
                del self._names[rid]
                self._name_locks.pop(rid, None)
            else:
                for kind, current in list(self._names[rid].items()):
                    if current.route != routes[rid]:
                        del self._names[rid][kind]
        for session in self.store:
            if session.route_id not in routes:
                self.store.remove(session)
                self._spawn(session.close())
        for upstream in closing:
            self._spawn(upstream.close())
        if stale:
            log.info("mcp_upstreams_dropped", extra={"services": sorted(stale)})

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        try:
            task = asyncio.get_running_loop().create_task(self._quiet(work))
        except RuntimeError:  # no loop (a swap before serving): nothing was opened yet
            work.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _quiet(work: Coroutine[Any, Any, Any]) -> None:
        try:
            await work
        except Exception:
            log.warning("mcp_close_failed", exc_info=True)

    # --------------------------------------------------------------------------------- admin

    def session_view(self, service_id: str) -> JsonObj | None:
        """The admin session of a service (or its stdio process), reference §5.8 shape."""
        held = self._admin.get(service_id)
        if held is not None:
            view_id, upstream = held
        elif service_id in self._shared:
            upstream = self._shared[service_id]
            view_id = f"stdio:{service_id}"
        else:
            return None
        return {"id": view_id, **upstream.describe()}

    def sessions(self) -> list[JsonObj]:
        return [s.view(self._shared) for s in self.store if not s.closed]

    def view(self) -> JsonObj:
        return {
            "in_flight": self.registry.inflight(),
            "progress": self.registry.progress(),
            "sessions": self.sessions(),
            "failures": self.registry.failures(),
            "counters": self.counters.view(self.store),
            "stdio": [
                {
                    "service_id": sid,
                    "pid": getattr(up, "pid", None),
                    "state": up.state,
                    "restarts": getattr(up, "restarts", 0),
                    "last_error": up.last_error,
                    "stderr_tail": getattr(up, "stderr_tail", ""),
                }
                for sid, up in self._shared.items()
            ],
        }

    async def cancel(self, route_id: str, request_id: str) -> bool:
        """Cancel in-flight requests of a route by client request id (or request key); the
        client gets a -32000 error answer."""
        hits = [
            e.cancel("cancelled by the gateway admin")
            for e in self.registry.find(route_id, request_id)
        ]
        return any(hits)

    # ---------------------------------------------------------------------------- lifecycle

    def drain(self) -> None:
        """The gateway stops: end the standalone streams, so they do not hold the shutdown."""
        for session in self.store:
            if session.stream is not None:
                session.stream.end()

    async def close(self) -> None:
        self._closed = True
        if self._janitor is not None:
            self._janitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._janitor
        sessions = list(self.store)
        for session in sessions:
            self.store.remove(session)
        upstreams = list(self._shared.values()) + [u for _, u in self._admin.values()]
        self._shared.clear()
        self._admin.clear()
        await asyncio.gather(
            *(s.close() for s in sessions),
            *(u.close() for u in upstreams),
            return_exceptions=True,
        )
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class SessionBackend:
    """A route's services as one session reaches them (the multiplexer's :class:`Backend`)."""

    def __init__(
        self,
        runtime: McpRuntime,
        session: DownstreamSession,
        services: Mapping[str, McpService],
        route_id: str,
    ) -> None:
        self.runtime = runtime
        self.session = session
        self.services = services
        self.route_id = route_id

    def service(self, service_id: str) -> McpService:
        service = self.services.get(service_id)
        if service is None:
            raise UpstreamError(f"mcp service {service_id} not found")
        if service.disabled:
            raise UpstreamError(f"mcp service {service_id} is disabled")
        return service

    async def get(self, service_id: str) -> Upstream:
        return await self.runtime.upstream(self.session, self.service(service_id))

    async def capabilities(self, service_id: str) -> JsonObj:
        upstream = await self.get(service_id)
        caps = (upstream.init_result or {}).get("capabilities")
        return caps if isinstance(caps, dict) else {}

    async def request(self, service_id: str, method: str, params: JsonObj | None) -> Any:
        upstream = await self.get(service_id)
        return await upstream.request(method, params, timeout=LIST_TIMEOUT_S)

    def failed(self, service_id: str, method: str, error: str) -> None:
        log.warning(
            "mcp_service_skipped",
            extra={
                "route_id": self.route_id,
                "service_id": service_id,
                "method": method,
                "error": error[:300],
            },
        )
        self.runtime.registry.failed(self.route_id, service_id, method, error)
