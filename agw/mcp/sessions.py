"""Downstream sessions: what a client holds with the gateway, and the store that keeps them.

A session is one client's view of a route: its negotiated version and capabilities, the
upstream sessions opened for it (HTTP and SSE services: one per downstream session, so no
client's upstream state reaches another; stdio services are shared processes owned by the
:class:`~agw.mcp.pool.UpstreamPool`), its standalone SSE stream, and the server->client
requests relayed to it.

- ``handshake``: issued by ``initialize``; the id (``Mcp-Session-Id``) is self-contained and
  sealed (agw.mcp.session_id), so any replica sharing the key can rebuild the session from it
  (``portable``); bound to the route and the virtual key that created it. Without a session
  key (a bare :class:`~agw.mcp.state.McpState`), and until the ``initialize`` answer, it is 32
  random hex digits from :mod:`secrets`.
- ``sse``: a legacy HTTP+SSE (2024-11-05) client; lives as long as its GET ``/sse`` stream.
- ``modern``: the stateless era (2026-07-28); one per (route, virtual key), never shown to the
  client, expired when idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from agw.clock import now_ms
from agw.mcp.inflight import InFlight
from agw.mcp.jsonrpc import RequestId, encode
from agw.mcp.mux import Multiplexer
from agw.mcp.upstream import Upstream
from agw.runtime.snapshot import Snapshot
from agw.sse import frame
from agw.types import JsonObj

STREAM_QUEUE = 1000  # messages a standalone stream buffers before dropping the oldest
STREAM_BYTES = 16 * 1024 * 1024  # and bytes
RELAYS = 100  # server->client requests awaiting a client answer, per session
# upstream messages relayed to one session: a token bucket (messages per second, burst)
RELAY_RATE = 100.0
RELAY_BURST = 200.0

# client capability a server->client request needs
RELAYED = {
    "sampling/createMessage": "sampling",
    "elicitation/create": "elicitation",
    "roots/list": "roots",
}


def mask(secret: str | None) -> str | None:
    return f"{secret[:8]}****" if secret else None


def sse_message(msg: JsonObj) -> bytes:
    """One JSON-RPC message as the SSE event every MCP stream carries (``event: message``,
    compact JSON)."""
    return frame(encode(msg).decode(), "message")


class Stream:
    """A standalone SSE stream's queue (GET stream, or the legacy /sse stream) of encoded
    events; ``None`` ends it. At ``STREAM_QUEUE`` events or ``STREAM_BYTES`` bytes (a client
    that does not read), the oldest are dropped; one event larger than that is still kept."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=STREAM_QUEUE)
        self.dropped = 0
        self.size = 0  # bytes queued

    def put(self, msg: JsonObj | None) -> None:
        data = None if msg is None else sse_message(msg)
        need = len(data) if data is not None else 0
        while self.size + need > STREAM_BYTES and not self.queue.empty():
            self._drop_oldest()
        while True:
            try:
                self.queue.put_nowait(data)
                self.size += need
                return
            except asyncio.QueueFull:
                self._drop_oldest()

    def _drop_oldest(self) -> None:
        with contextlib.suppress(asyncio.QueueEmpty):
            old = self.queue.get_nowait()
            self.size -= len(old) if old is not None else 0
            self.dropped += 1

    async def get(self) -> bytes | None:
        """The next encoded event (None: the stream ends)."""
        data = await self.queue.get()
        self.size -= len(data) if data is not None else 0
        return data

    def end(self) -> None:
        self.put(None)


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved up; :meth:`take` spends one."""

    __slots__ = ("at", "burst", "rate", "tokens")

    def __init__(self, rate: float = RELAY_RATE, burst: float = RELAY_BURST) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


@dataclass
class RelayedRequest:
    """A server->client request forwarded to the client under a gateway id, awaiting its
    answer."""

    upstream: Upstream
    upstream_id: RequestId
    method: str


@dataclass(eq=False)
class DownstreamSession:
    key: str  # the session id (handshake, sse) or the stateless key (modern)
    era: str  # handshake | sse | modern
    route_id: str
    owner: str | None  # whose: the virtual key's id, or a JWT caller's (Principal.owner)
    protocol_version: str = ""
    client_capabilities: JsonObj = field(default_factory=dict)
    client_info: JsonObj | None = None
    created_at_ms: int = field(default_factory=now_ms)
    last_used_at_ms: int = field(default_factory=now_ms)
    upstreams: dict[str, Upstream] = field(default_factory=dict)  # its own (not stdio)
    shared_used: set[str] = field(default_factory=set)  # stdio services it reached
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    stream: Stream | None = None  # the attached standalone stream
    relays: dict[str, RelayedRequest] = field(default_factory=dict)
    inflight: dict[str, InFlight] = field(default_factory=dict)  # by client request id
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # legacy message handling
    relay_budget: TokenBucket = field(default_factory=TokenBucket)  # upstream -> this client
    closed: bool = False
    portable: bool = False  # its id is sealed: another replica may serve it too
    # the route's multiplexer as this session reaches it, for the snapshot it was built from
    # (agw.mcp.server): built once per session and config, not per call
    mux: Multiplexer | None = None
    mux_snapshot: Snapshot | None = None
    # fixed at creation (key, era and key id never change): what views and request keys show
    short: str = field(init=False)
    tenant: str = field(init=False)
    modern: bool = field(init=False)

    def __post_init__(self) -> None:
        self.modern = self.era == "modern"
        # a non-secret handle for views and request keys
        if self.modern:
            self.short = f"stateless/{(self.owner or '-').replace(chr(0), ':')}"
        else:
            self.short = mask(self.key) or "-"
        # whose messages a shared upstream may give this session (agw.mcp.relay): its virtual
        # key's, or, without a key, its own only
        if self.owner is not None:
            self.tenant = f"key\x00{self.owner}"
        else:
            self.tenant = self.key

    @property
    def public_id(self) -> str | None:
        return None if self.modern else self.key

    def touch(self) -> None:
        self.last_used_at_ms = now_ms()

    def supports(self, method: str) -> bool:
        """The client declared the capability a server->client request needs."""
        cap = RELAYED.get(method)
        return not self.modern and cap is not None and cap in self.client_capabilities

    def add_relay(self, gateway_id: str, relay: RelayedRequest) -> None:
        while len(self.relays) >= RELAYS:
            self.relays.pop(next(iter(self.relays)))
        self.relays[gateway_id] = relay

    def push(self, msg: JsonObj) -> bool:
        """Onto the standalone stream; False (dropped) when none is open."""
        if self.stream is None:
            return False
        self.stream.put(msg)
        return True

    def own_task(self, task: asyncio.Task[Any]) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def idle(self) -> bool:
        return not self.inflight and not self.tasks and self.stream is None

    async def close(self, *, detach: bool = False) -> None:
        """End the stream, cancel its calls, close its own upstream sessions (DELETE; with
        ``detach``, only this replica's connections: another replica may still serve them)."""
        if self.closed:
            return
        self.closed = True
        self.mux = self.mux_snapshot = None
        if self.stream is not None:
            self.stream.end()
        for entry in list(self.inflight.values()):
            entry.cancel("session closed")
        for task in list(self.tasks):
            task.cancel()
        upstreams = list(self.upstreams.values())
        if detach:
            for upstream in upstreams:
                upstream.session_id = None  # nothing to DELETE
        self.upstreams.clear()
        self.relays.clear()
        await asyncio.gather(*(u.close() for u in upstreams), return_exceptions=True)

    def view(self, shared: dict[str, Upstream]) -> JsonObj:
        ups = [u.describe() for u in self.upstreams.values()]
        ups += [shared[s].describe() | {"shared": True} for s in self.shared_used if s in shared]
        return {
            "id": mask(self.public_id),
            "era": self.era,
            "route_id": self.route_id,
            "virtual_key_id": None if (self.owner or "").startswith("jwt\x00") else self.owner,
            "protocol_version": self.protocol_version,
            "client_info": self.client_info,
            "created_at": self.created_at_ms,
            "last_used_at": self.last_used_at_ms,
            "stream_open": self.stream is not None,
            "upstreams": ups,
        }


class SessionRefused(Exception):
    """No room for a new session (an anonymous caller at the store's limit): HTTP 503."""


Bucket = tuple[str, str | None]  # (route id, virtual key id or None for anonymous callers)


class SessionStore:
    """Sessions by key, with quotas (docs/mcp.md, "Lifecycle").

    Each (route, principal) is a bucket: a virtual key on a route, or every caller without a key
    on a route. A bucket at ``per_principal`` makes room by closing its own oldest session (idle
    first): one principal's flood only ever evicts its own sessions. At ``limit`` in all, a
    caller with a key evicts from the largest bucket; an anonymous caller only from its own
    bucket, and is refused (:class:`SessionRefused`) when that is empty: anonymous sessions
    never evict anyone else's.
    """

    def __init__(self, limit: int = 10_000, per_principal: int = 1_000) -> None:
        self.limit = limit
        self.per_principal = max(1, per_principal)
        self.evicted = 0
        self.refused = 0
        self.rebuilt = 0  # sessions rebuilt from their sealed id (adopt)
        self._by_key: dict[str, DownstreamSession] = {}
        self._buckets: dict[Bucket, dict[str, DownstreamSession]] = {}
        # the stateless session of each (route, key): found without building its key
        self._stateless: dict[Bucket, DownstreamSession] = {}

    def __iter__(self) -> Iterator[DownstreamSession]:
        return iter(list(self._by_key.values()))

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> DownstreamSession | None:
        return self._by_key.get(key)

    def count(self, route_id: str, owner: str | None) -> int:
        return len(self._buckets.get((route_id, owner), ()))

    def create(
        self, era: str, route_id: str, owner: str | None
    ) -> tuple[DownstreamSession, DownstreamSession | None]:
        """A new handshake or sse session, and the one evicted to make room (to be closed).
        Raises SessionRefused."""
        evicted = self._make_room((route_id, owner))
        key = secrets.token_hex(16)
        session = DownstreamSession(key, era, route_id, owner)
        self._add(session)
        return session, evicted

    def stateless(
        self, route_id: str, owner: str | None
    ) -> tuple[DownstreamSession, DownstreamSession | None]:
        bucket = (route_id, owner)
        found = self._stateless.get(bucket)
        if found is not None:
            return found, None
        evicted = self._make_room(bucket)
        key = f"stateless\x00{route_id}\x00{owner or ''}"
        session = DownstreamSession(key, "modern", route_id, owner)
        self._add(session)
        self._stateless[bucket] = session
        return session, evicted

    def adopt(
        self, key: str, route_id: str, owner: str | None
    ) -> tuple[DownstreamSession, DownstreamSession | None]:
        """A handshake session rebuilt from its sealed id ``key``, and the one evicted to make
        room. Raises SessionRefused."""
        evicted = self._make_room((route_id, owner))
        session = DownstreamSession(key, "handshake", route_id, owner, portable=True)
        self._add(session)
        self.rebuilt += 1
        return session, evicted

    def rekey(self, session: DownstreamSession, key: str) -> None:
        """The session is known by ``key`` (its sealed id) from now on; its ``tenant`` stays."""
        self.remove(session)
        session.key, session.short, session.portable = key, mask(key) or "-", True
        self._add(session)

    def remove(self, session: DownstreamSession) -> None:
        if self._by_key.get(session.key) is session:
            del self._by_key[session.key]
            bucket = (session.route_id, session.owner)
            if self._stateless.get(bucket) is session:
                del self._stateless[bucket]
            members = self._buckets.get(bucket)
            if members is not None:
                members.pop(session.key, None)
                if not members:
                    del self._buckets[bucket]

    def _add(self, session: DownstreamSession) -> None:
        self._by_key[session.key] = session
        bucket = (session.route_id, session.owner)
        self._buckets.setdefault(bucket, {})[session.key] = session

    def _make_room(self, bucket: Bucket) -> DownstreamSession | None:
        own = self._buckets.get(bucket, {})
        if len(own) >= self.per_principal:
            return self._evict(own)
        if len(self._by_key) < self.limit:
            return None
        if bucket[1] is None:  # anonymous: never at anyone else's expense
            if not own:
                self.refused += 1
                raise SessionRefused(f"too many MCP sessions ({self.limit})")
            return self._evict(own)
        largest = max(self._buckets.values(), key=len)
        return self._evict(largest)

    def _evict(self, members: dict[str, DownstreamSession]) -> DownstreamSession | None:
        pool = [s for s in members.values() if s.idle()] or list(members.values())
        if not pool:
            return None
        oldest = min(pool, key=lambda s: s.last_used_at_ms)
        self.remove(oldest)
        self.evicted += 1
        return oldest
