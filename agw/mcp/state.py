"""The MCP plane's live state: the client sessions, the upstream sessions (an
:class:`~agw.mcp.pool.UpstreamPool`), the calls in flight, the routes' name maps, what was
dropped, and what the admin API shows of all of it (``/admin/mcp/runtime``,
``/admin/mcp/sessions``).

A config swap drops every upstream whose service is gone or whose signature (transport, url,
post_url, command, args, env, auth; an openapi service's spec, base_url, include, exclude)
changed, the name maps of changed routes, and the sessions of deleted routes; then it starts the
stdio processes and openapi services the new config routes to (all at once, in the
background). A janitor (every 30 s) closes handshake and legacy sessions idle for 30 minutes,
stateless ones idle for 10, and admin upstream sessions unused for 10. A portable session
(its id sealed, agw.mcp.session_id) that expires or is evicted here leaves its upstream
sessions open on their servers: another replica may still serve it; the client's DELETE ends
them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from agw.clock import now_ms
from agw.config.mcp import McpRoute, McpService
from agw.mcp.inflight import Registry
from agw.mcp.mux import NameMap
from agw.mcp.pool import UpstreamPool, signature
from agw.mcp.session_id import UPSTREAM_ID_MAX, Sealed, SessionSealer, UpstreamRef
from agw.mcp.sessions import RELAYED, DownstreamSession, SessionStore, TokenBucket
from agw.mcp.upstream import Listener, StreamableHttpUpstream, Upstream
from agw.types import JsonObj

if TYPE_CHECKING:
    from agw.runtime.manager import ConfigManager
    from agw.runtime.snapshot import Snapshot

log = logging.getLogger(__name__)

SESSION_IDLE_S = 1800.0
STATELESS_IDLE_S = 600.0
ADMIN_IDLE_S = 600.0
JANITOR_EVERY_S = 30.0
SESSION_LIMIT = 10_000
SESSIONS_PER_PRINCIPAL = 1_000
PER_PRINCIPAL_ENV = "AGW_MCP_SESSIONS_PER_PRINCIPAL"
# the upstream capabilities the gateway reads, as a sealed session id carries them
UPSTREAM_CAPABILITIES = ("tools", "prompts", "resources", "logging", "completions")

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

    __slots__ = ("rate_limited", "relayed", "unattributed", "undeliverable")

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
            "sessions_rebuilt": store.rebuilt,
        }


def routed_services(snapshot: Snapshot) -> list[McpService]:
    """The enabled services some MCP route of the snapshot serves."""
    wanted: dict[str, McpService] = {}
    for route in snapshot.routes:
        if route.kind != "mcp":
            continue
        config: McpRoute = route.config
        for sid in config.services:
            service = snapshot.mcp_services.get(sid)
            if service is not None and not service.disabled:
                wanted[sid] = service
    return list(wanted.values())


class McpState:
    """The MCP plane's live state (see the module docstring)."""

    def __init__(
        self,
        manager: ConfigManager | None = None,
        *,
        session_limit: int = SESSION_LIMIT,
        per_principal: int | None = None,
        session_key: bytes | None = None,
    ) -> None:
        """``session_key``: seals the handshake sessions' ids so that any replica with the
        same key serves them (agw.mcp.session_id); None: random ids, this process only."""
        self.manager = manager
        self.sealer = SessionSealer(session_key) if session_key is not None else None
        self._deleted: dict[str, None] = {}  # sealed ids the client ended here (oldest first)
        self.registry = Registry()
        self.counters = Counters()
        self.store = SessionStore(
            session_limit, per_principal_from_env() if per_principal is None else per_principal
        )
        self.pool = UpstreamPool(self._listener)
        self._outside: dict[str, TokenBucket] = {}  # per shared process: messages outside calls
        self._names: dict[str, dict[str, NameMap]] = {}  # route id -> kind -> map
        self._name_locks: dict[str, dict[str, asyncio.Lock]] = {}
        self._janitor: asyncio.Task[None] | None = None
        self._on_message: OnMessage | None = None
        self._relay_ids = 0
        self._closed = False
        self._signatures: dict[str, tuple[Any, ...]] = {}
        if manager is not None:
            self._signatures = self._signatures_of(manager.snapshot)
            manager.on_swap(self._on_swap)
            self.pool.start(routed_services(manager.snapshot))

    def bind(self, on_message: OnMessage) -> None:
        """Where upstream messages that belong to no call go (the plane's relay)."""
        self._on_message = on_message

    def next_relay_id(self) -> str:
        self._relay_ids += 1
        return f"agw-{self._relay_ids}"

    def _listener(self, session: DownstreamSession | None) -> Listener:
        async def listen(upstream: Upstream, msg: JsonObj) -> None:
            if self._on_message is not None:
                try:
                    await self._on_message(session, upstream, msg)
                except Exception:
                    log.exception("mcp_upstream_message_failed")

        return listen

    async def admin_upstream(self, service: McpService) -> Upstream:
        """The gateway-owned session of a service for the admin API (stdio: the shared
        process), ready."""
        return await self.pool.admin_upstream(service)

    # ------------------------------------------------------------------------------ sessions

    def _start_janitor(self) -> None:
        if self._janitor is None and not self._closed:
            self._janitor = asyncio.get_running_loop().create_task(self._sweep())

    def new_session(self, era: str, route_id: str, owner: str | None) -> DownstreamSession:
        self._start_janitor()
        session, evicted = self.store.create(era, route_id, owner)
        if evicted is not None:
            self.pool.spawn(evicted.close(detach=evicted.portable))
        return session

    def seal(self, session: DownstreamSession) -> None:
        """An initialized handshake session gets its sealed id, naming the HTTP upstream
        sessions it opened (kept as it is when there is no key, or it is too large)."""
        if self.sealer is None or session.closed:
            return
        refs = []
        for sid, upstream in session.upstreams.items():
            found = upstream.session_id
            if (
                not isinstance(upstream, StreamableHttpUpstream)
                or upstream.state != "ready"
                or upstream.modern
                or not found
                or len(found) > UPSTREAM_ID_MAX
            ):
                continue
            caps = (upstream.init_result or {}).get("capabilities")
            names = tuple(c for c in UPSTREAM_CAPABILITIES if isinstance(caps, dict) and c in caps)
            refs.append(UpstreamRef(sid, found, upstream.protocol_version, names))
        sealed = Sealed(
            session.route_id,
            session.owner,
            session.protocol_version,
            tuple(session.client_capabilities),
            session.client_info,
            now_ms(),
            tuple(refs),
        )
        key = self.sealer.seal(sealed)
        if key is not None:
            self.store.rekey(session, key)

    def rebuild(self, key: str, route_id: str, owner: str | None) -> DownstreamSession | None:
        """The session a sealed id names, rebuilt here (another replica, or this one before a
        restart, opened it), bound to its HTTP upstream sessions; None when the id does not
        open, has expired, or belongs to another route or owner. Raises SessionRefused."""
        if self.sealer is None or key in self._deleted:
            return None
        found = self.sealer.open(key)
        if found is None or found.route_id != route_id or found.owner != owner:
            return None
        self._start_janitor()
        session, evicted = self.store.adopt(key, route_id, owner)
        if evicted is not None:
            self.pool.spawn(evicted.close(detach=evicted.portable))
        session.protocol_version = found.protocol_version
        relayed = set(RELAYED.values())
        session.client_capabilities = {c: {} for c in found.client_capabilities if c in relayed}
        session.client_info = found.client_info
        session.created_at_ms = found.issued_at_ms
        services = self.manager.snapshot.mcp_services if self.manager is not None else {}
        for ref in found.upstreams:
            service = services.get(ref.service_id)
            if service is not None:
                caps: JsonObj = {c: {} for c in ref.capabilities}
                self.pool.adopt(session, service, ref.session_id, ref.protocol_version, caps)
        log.info(
            "mcp_session_rebuilt",
            extra={
                "route_id": route_id,
                "session": session.short,
                "upstreams": len(found.upstreams),
            },
        )
        return session

    def stateless(self, route_id: str, owner: str | None) -> DownstreamSession:
        if self._janitor is None:
            self._start_janitor()
        session, evicted = self.store.stateless(route_id, owner)
        if evicted is not None:
            self.pool.spawn(evicted.close(detach=evicted.portable))
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

    async def delete_session(self, session: DownstreamSession) -> None:
        """The client ended the session (DELETE): its upstream sessions too, and a sealed id
        is not rebuilt here again (the last ``SESSION_LIMIT`` of them are remembered)."""
        if session.portable:
            while len(self._deleted) >= SESSION_LIMIT:
                del self._deleted[next(iter(self._deleted))]
            self._deleted[session.key] = None
        await self.end_session(session)

    def sessions_using(self, service_id: str) -> list[DownstreamSession]:
        """Open sessions that reached the shared (stdio) process of a service."""
        return [s for s in self.store if service_id in s.shared_used and not s.closed]

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(JANITOR_EVERY_S)
            self.expire(now_ms())

    def expire(self, now: int) -> None:
        for session in self.store:
            ttl = STATELESS_IDLE_S if session.modern else SESSION_IDLE_S
            if session.idle() and now - session.last_used_at_ms > ttl * 1000:
                self.store.remove(session)
                self.pool.spawn(session.close(detach=session.portable))
        self.pool.expire_admin(now, ADMIN_IDLE_S * 1000)

    # ----------------------------------------------------------------------------- name maps

    def names(self, route_id: str) -> tuple[dict[str, NameMap], dict[str, asyncio.Lock]]:
        return self._names.setdefault(route_id, {}), self._name_locks.setdefault(route_id, {})

    def invalidate_names(self, service_id: str, kind: str) -> None:
        """A service's list changed: the maps of the routes it is part of are rebuilt."""
        for maps in self._names.values():
            found = maps.get(kind)
            if found is not None and service_id in found.route.services:
                del maps[kind]

    def route(self, route_id: str) -> McpRoute | None:
        """The MCP route of the current config with this id."""
        if self.manager is None:
            return None
        for route in self.manager.snapshot.routes:
            if route.id == route_id and route.kind == "mcp":
                config: McpRoute = route.config
                return config
        return None

    # ------------------------------------------------------------------------- config swaps

    @staticmethod
    def _signatures_of(snapshot: Snapshot) -> dict[str, tuple[Any, ...]]:
        return {
            sid: signature(svc) for sid, svc in snapshot.mcp_services.items() if not svc.disabled
        }

    def _on_swap(self, snapshot: Snapshot) -> None:
        new = self._signatures_of(snapshot)
        pool = self.pool
        stale = {sid for sid, sig in self._signatures.items() if new.get(sid) != sig}
        stale |= {sid for sid in pool.shared if sid not in new}
        stale |= {sid for sid in pool.admin if sid not in new}
        self._signatures = new
        closing: list[Upstream] = []
        for sid in stale:
            closing += pool.drop(sid)
            self._outside.pop(sid, None)
            for session in self.store:
                if sid in session.upstreams:
                    closing.append(session.upstreams.pop(sid))
                session.shared_used.discard(sid)
            for maps in self._names.values():
                for kind, found in list(maps.items()):
                    if sid in found.route.services:
                        del maps[kind]
        routes: dict[str, McpRoute] = {r.id: r.config for r in snapshot.routes if r.kind == "mcp"}
        for rid in list(self._names):
            if rid not in routes:
                del self._names[rid]
                self._name_locks.pop(rid, None)
            else:
                for kind, found in list(self._names[rid].items()):
                    if found.route != routes[rid]:
                        del self._names[rid][kind]
        for session in self.store:
            if session.route_id not in routes:
                self.store.remove(session)
                pool.spawn(session.close())
        for upstream in closing:
            pool.spawn(upstream.close())
        if stale:
            log.info("mcp_upstreams_dropped", extra={"services": sorted(stale)})
        if not self._closed:
            pool.start(routed_services(snapshot))

    # --------------------------------------------------------------------------------- admin

    def session_view(self, service_id: str) -> JsonObj | None:
        """The admin session of a service (or its stdio process), reference §5.8 shape."""
        return self.pool.session_view(service_id)

    def sessions(self) -> list[JsonObj]:
        return [s.view(self.pool.shared) for s in self.store if not s.closed]

    def view(self) -> JsonObj:
        return {
            "in_flight": self.registry.inflight(),
            "progress": self.registry.progress(),
            "sessions": self.sessions(),
            "failures": self.registry.failures(),
            "counters": self.counters.view(self.store),
            "stdio": self.pool.stdio_view(),
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
        await asyncio.gather(
            *(s.close() for s in sessions), self.pool.close(), return_exceptions=True
        )
