"""Who owns which upstream MCP session, and when they start.

- a **stdio** service is one process, shared by every client and the admin API; started when
  the config that routes to it loads (every such service at once, in the background: agwd's
  start and a config apply never wait for it, and a server that fails to start fails alone),
  or on first use; restarted by its transport when it dies; closed when the service is deleted,
  changed or disabled, or when the gateway stops;
- an **openapi** service is shared and started the same way: it keeps no session state, and
  its spec is read once;
- an **HTTP / SSE** service gets one upstream session per downstream session (created on first
  use, closed with it: DELETE, idle expiry, eviction) and one more for the admin API; a session
  rebuilt from its id on another replica binds to the upstream sessions the id names
  (:meth:`UpstreamPool.adopt`).

A call finds a ready upstream without a lock or a timer (:meth:`UpstreamPool.ready`); only a
missing, stale or still-connecting one takes the slow path.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from agw.config.mcp import McpService
from agw.mcp.inflight import Registry
from agw.mcp.sessions import DownstreamSession
from agw.mcp.upstream import (
    Listener,
    StreamableHttpUpstream,
    Upstream,
    UpstreamError,
    create_upstream,
)
from agw.types import JsonObj

log = logging.getLogger(__name__)

# the transports of which the gateway keeps one upstream per service, shared by every client
SHARED_TRANSPORTS = frozenset({"stdio", "openapi"})
ADMIN_TENANT = "\x00admin"  # the admin API as a user of a shared process (never a session key)
READY_TIMEOUT_S = 30.0  # handshake with an upstream
LIST_TIMEOUT_S = 60.0  # one list page from an upstream


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
        service.spec,
        service.base_url,
        tuple(service.include),
        tuple(service.exclude),
    )


def current(upstream: Upstream, service: McpService) -> bool:
    """The upstream serves this config of the service (the same object, or the same
    signature: it then takes the new object, so the next call needs only the identity)."""
    if upstream.state == "closed":
        return False
    if upstream.service is service:
        return True
    if signature(upstream.service) != signature(service):
        return False
    upstream.service = service
    return True


class UpstreamPool:
    """The upstream sessions of the MCP plane (see the module docstring). ``listener`` gives
    the listener of a new upstream: of a downstream session's own, or (None) of a shared
    process or an admin session."""

    def __init__(self, listener: Callable[[DownstreamSession | None], Listener]) -> None:
        self._listener = listener
        self.shared: dict[str, Upstream] = {}  # stdio, by service id
        self.admin: dict[str, tuple[str, Upstream]] = {}  # service id -> (view id, upstream)
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._starts: set[asyncio.Task[Any]] = set()
        self.closed = False

    # ------------------------------------------------------------------------- the fast path

    def ready(self, session: DownstreamSession, service: McpService) -> Upstream | None:
        """The ready upstream serving ``session`` for ``service``, if there is one now."""
        if service.transport in SHARED_TRANSPORTS:
            upstream = self.shared.get(service.id)
            if upstream is None or upstream.state != "ready" or upstream.service is not service:
                return None
            if service.id not in session.shared_used:
                session.shared_used.add(service.id)
            upstream.admit(session.tenant)
            return upstream
        upstream = session.upstreams.get(service.id)
        if upstream is None or upstream.state != "ready" or upstream.service is not service:
            return None
        return upstream

    # ------------------------------------------------------------------------- the slow path

    def _lock(self, key: str) -> asyncio.Lock:
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock

    @staticmethod
    async def _ready(upstream: Upstream) -> Upstream:
        if upstream.state == "ready":
            return upstream
        try:
            await asyncio.wait_for(asyncio.shield(upstream.ensure_ready()), READY_TIMEOUT_S)
        except TimeoutError:
            raise UpstreamError(
                f"mcp service {upstream.service.id} did not finish its handshake in "
                f"{READY_TIMEOUT_S:.0f} s"
            ) from None
        return upstream

    def _shared(self, service: McpService) -> Upstream:
        """The shared upstream of a service (a stdio process, an openapi service): created,
        not yet started."""
        upstream = self.shared.get(service.id)
        if upstream is not None and not current(upstream, service):
            self.spawn(upstream.close())
            upstream = None
        if upstream is None:
            if self.closed:
                raise UpstreamError("the gateway is shutting down")
            upstream = create_upstream(service, self._listener(None))
            self.shared[service.id] = upstream
        return upstream

    async def shared_ready(self, service: McpService) -> Upstream:
        """The shared upstream of a service (a stdio process, an openapi service), ready."""
        async with self._lock(f"shared\x00{service.id}"):
            upstream = self._shared(service)
        return await self._ready(upstream)

    async def upstream(self, session: DownstreamSession, service: McpService) -> Upstream:
        """The upstream session serving ``session`` for ``service``, ready."""
        if service.transport in SHARED_TRANSPORTS:
            session.shared_used.add(service.id)
            process = await self.shared_ready(service)
            process.admit(session.tenant)
            return process
        lock = session.locks.get(service.id)
        if lock is None:
            lock = session.locks[service.id] = asyncio.Lock()
        async with lock:
            upstream = session.upstreams.get(service.id)
            if upstream is not None and not current(upstream, service):
                del session.upstreams[service.id]
                self.spawn(upstream.close())
                upstream = None
            if upstream is None:
                if session.closed or self.closed:
                    raise UpstreamError("the session is closed")
                upstream = create_upstream(service, self._listener(session))
                session.upstreams[service.id] = upstream
        return await self._ready(upstream)

    def adopt(
        self,
        session: DownstreamSession,
        service: McpService,
        session_id: str,
        protocol_version: str | None,
        capabilities: JsonObj,
    ) -> None:
        """Bind a rebuilt ``session`` (agw.mcp.state) to the streamable HTTP upstream session
        another replica opened for it; ready at once, without a handshake."""
        if service.transport != "streamable_http" or service.disabled or self.closed:
            return
        upstream = create_upstream(service, self._listener(session))
        assert isinstance(upstream, StreamableHttpUpstream)
        upstream.adopt(session_id, protocol_version, capabilities)
        session.upstreams[service.id] = upstream

    async def admin_upstream(self, service: McpService) -> Upstream:
        """The gateway-owned session of a service for the admin API (stdio: the shared
        process), ready."""
        if service.transport in SHARED_TRANSPORTS:
            process = await self.shared_ready(service)
            process.admit(ADMIN_TENANT)  # its messages are no client's from now on
            return process
        async with self._lock(f"admin\x00{service.id}"):
            held = self.admin.get(service.id)
            if held is not None and not current(held[1], service):
                self.spawn(held[1].close())
                held = None
            if held is None:
                if self.closed:
                    raise UpstreamError("the gateway is shutting down")
                held = (str(uuid.uuid4()), create_upstream(service, self._listener(None)))
                self.admin[service.id] = held
        return await self._ready(held[1])

    # ------------------------------------------------------------------- start at config load

    def start(self, services: Iterable[McpService]) -> None:
        """Start the shared upstreams (stdio processes, openapi specs) of ``services`` now, all
        at once, in the background: the first client then waits for the slowest, not for their
        sum. A failure is logged (the next use tries again, with the transport's backoff)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet (a config loaded before serving): first use starts
            return
        for service in services:
            if service.transport not in SHARED_TRANSPORTS or service.disabled or self.closed:
                continue
            current_one = self.shared.get(service.id)
            if current_one is not None and current(current_one, service):
                continue  # running (or starting) already
            task = loop.create_task(self._start(service))
            self._starts.add(task)
            task.add_done_callback(self._starts.discard)

    async def _start(self, service: McpService) -> None:
        try:
            await self.shared_ready(service)
        except Exception as exc:  # one that cannot start never stops the others
            if self.closed:
                return
            log.warning(
                "mcp_upstream_start_failed",
                extra={"service_id": service.id, "error": str(exc)[:300]},
            )
        else:
            log.info("mcp_upstream_started", extra={"service_id": service.id})

    # ------------------------------------------------------------------------------ dropping

    def drop(self, service_id: str) -> list[Upstream]:
        """Forget the gateway-owned upstreams of a service (to be closed by the caller)."""
        out = []
        if service_id in self.shared:
            out.append(self.shared.pop(service_id))
        if service_id in self.admin:
            out.append(self.admin.pop(service_id)[1])
        return out

    def expire_admin(self, now: int, idle_ms: float) -> None:
        for sid, (_, upstream) in list(self.admin.items()):
            if now - (upstream.last_used_at_ms or upstream.created_at_ms) > idle_ms:
                del self.admin[sid]
                self.spawn(upstream.close())

    def spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        """Run ``work`` (a close) in an owned background task; its failure is logged."""
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

    async def close(self) -> None:
        """Close every gateway-owned upstream and wait for the closes under way."""
        self.closed = True
        for task in list(self._starts):
            task.cancel()
        upstreams = list(self.shared.values()) + [u for _, u in self.admin.values()]
        self.shared.clear()
        self.admin.clear()
        await asyncio.gather(*(u.close() for u in upstreams), return_exceptions=True)
        pending = [*self._tasks, *self._starts]
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)

    # --------------------------------------------------------------------------------- views

    def session_view(self, service_id: str) -> JsonObj | None:
        """The admin session of a service (or its stdio process), reference §5.8 shape."""
        held = self.admin.get(service_id)
        if held is not None:
            view_id, upstream = held
        elif service_id in self.shared:
            upstream = self.shared[service_id]
            view_id = f"{upstream.transport}:{service_id}"
        else:
            return None
        return {"id": view_id, **upstream.describe()}

    def stdio_view(self) -> list[JsonObj]:
        return [
            {
                "service_id": sid,
                "pid": getattr(up, "pid", None),
                "state": up.state,
                "restarts": getattr(up, "restarts", 0),
                "last_error": up.last_error,
                "stderr_tail": getattr(up, "stderr_tail", ""),
            }
            for sid, up in self.shared.items()
            if up.transport == "stdio"
        ]


class SessionBackend:
    """A route's services as one session reaches them (the multiplexer's :class:`Backend`)."""

    __slots__ = ("pool", "registry", "route_id", "services", "session")

    def __init__(
        self,
        pool: UpstreamPool,
        registry: Registry,
        session: DownstreamSession,
        services: Mapping[str, McpService],
        route_id: str,
    ) -> None:
        self.pool = pool
        self.registry = registry
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
        service = self.service(service_id)
        upstream = self.pool.ready(self.session, service)
        if upstream is not None:
            return upstream
        return await self.pool.upstream(self.session, service)

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
        self.registry.failed(self.route_id, service_id, method, error)
