"""Downstream sessions (what a client holds with the gateway) and the in-flight registry.

A session is one client's view of a route: its negotiated version and capabilities, the
upstream sessions opened for it (HTTP and SSE services: one per downstream session, so no
client's upstream state reaches another; stdio services are shared processes owned by the
runtime), its standalone SSE stream, and the server->client requests relayed to it.

- ``handshake``: issued by ``initialize``; the id (``Mcp-Session-Id``) is 32 random hex digits
  from :mod:`secrets`, bound to the route and the virtual key that created it.
- ``sse``: a legacy HTTP+SSE (2024-11-05) client; lives as long as its GET ``/sse`` stream.
- ``modern``: the stateless era (2026-07-28); one per (route, virtual key), never shown to the
  client, expired when idle.

The registry keeps what ``/admin/mcp/runtime`` shows: calls in flight (cancellable), progress,
a history ring of finished requests, and the recent fail-open skips.

Per POST: the :class:`Exchange` that answers it (JSON, or SSE once a message must reach the
client before the answer) and a :class:`Call` per JSON-RPC request, its usage row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from agw.clock import now_ms
from agw.mcp import jsonrpc as rpc
from agw.mcp.jsonrpc import RequestId, RpcError
from agw.mcp.upstream import Upstream
from agw.request import Request
from agw.types import Headers, JsonObj

STREAM_QUEUE = 1000  # messages a standalone stream buffers before dropping the oldest
STREAM_BYTES = 16 * 1024 * 1024  # and bytes
HISTORY = 1000
FAILURES = 100
PROGRESS = 1000
PROGRESS_MESSAGE_CHARS = 500  # of a progress message, as the admin view keeps it
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


class Stream:
    """A standalone SSE stream's queue (GET stream, or the legacy /sse stream) of encoded
    events; ``None`` ends it. At ``STREAM_QUEUE`` events or ``STREAM_BYTES`` bytes (a client
    that does not read), the oldest are dropped; one event larger than that is still kept."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=STREAM_QUEUE)
        self.dropped = 0
        self.size = 0  # bytes queued

    def put(self, msg: JsonObj | None) -> None:
        data = None if msg is None else sse_event(msg)
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
class Relay:
    """A server->client request forwarded to the client under a gateway id."""

    upstream: Upstream
    upstream_id: RequestId
    method: str


@dataclass
class InFlight:
    route_id: str
    request_id: str
    request_key: str
    method: str
    session_key: str
    session_short: str  # the session as views show it (masked)
    started_at: int
    progress_token: Any = None
    task: asyncio.Task[Any] | None = None
    cancelled_at: int | None = None
    cancel_reason: str | None = None

    def cancel(self, reason: str) -> bool:
        if self.task is None or self.task.done() or self.cancelled_at is not None:
            return False
        self.cancelled_at = now_ms()
        self.cancel_reason = reason
        self.task.cancel()
        return True

    def view(self) -> JsonObj:
        out: JsonObj = {
            "route_id": self.route_id,
            "request_id": self.request_id,
            "request_key": self.request_key,
            "method": self.method,
            "started_at": self.started_at,
        }
        if self.progress_token is not None:
            out["progress_token"] = self.progress_token
            out["progress_token_key"] = f"{self.session_short}:{self.progress_token}"
        if self.cancelled_at is not None:
            out["cancelled_at"] = self.cancelled_at
            out["cancel_reason"] = self.cancel_reason
        return out


@dataclass
class DownstreamSession:
    key: str  # the session id (handshake, sse) or the stateless key (modern)
    era: str  # handshake | sse | modern
    route_id: str
    virtual_key_id: str | None
    protocol_version: str = ""
    client_capabilities: JsonObj = field(default_factory=dict)
    client_info: JsonObj | None = None
    created_at_ms: int = field(default_factory=now_ms)
    last_used_at_ms: int = field(default_factory=now_ms)
    upstreams: dict[str, Upstream] = field(default_factory=dict)  # its own (not stdio)
    shared_used: set[str] = field(default_factory=set)  # stdio services it reached
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    stream: Stream | None = None  # the attached standalone stream
    relays: dict[str, Relay] = field(default_factory=dict)
    inflight: dict[str, InFlight] = field(default_factory=dict)  # by client request id
    tasks: set[asyncio.Task[Any]] = field(default_factory=set)  # legacy message handling
    relay_budget: TokenBucket = field(default_factory=TokenBucket)  # upstream -> this client
    closed: bool = False

    @property
    def public_id(self) -> str | None:
        return None if self.era == "modern" else self.key

    @property
    def tenant(self) -> str:
        """Whose messages a shared upstream may give this session (agw.mcp.plane): its
        virtual key's, or, without a key, its own only."""
        if self.virtual_key_id is not None:
            return f"key\x00{self.virtual_key_id}"
        return self.key

    @property
    def short(self) -> str:
        """A non-secret handle for views and request keys."""
        if self.era == "modern":
            return f"stateless/{self.virtual_key_id or '-'}"
        return mask(self.key) or "-"

    def touch(self) -> None:
        self.last_used_at_ms = now_ms()

    def supports(self, method: str) -> bool:
        """The client declared the capability a server->client request needs."""
        cap = RELAYED.get(method)
        return self.era != "modern" and cap is not None and cap in self.client_capabilities

    def add_relay(self, gateway_id: str, relay: Relay) -> None:
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

    async def close(self) -> None:
        """End the stream, cancel its calls, close its own upstream sessions (DELETE)."""
        if self.closed:
            return
        self.closed = True
        if self.stream is not None:
            self.stream.end()
        for entry in list(self.inflight.values()):
            entry.cancel("session closed")
        for task in list(self.tasks):
            task.cancel()
        upstreams = list(self.upstreams.values())
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
            "virtual_key_id": self.virtual_key_id,
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
        self._by_key: dict[str, DownstreamSession] = {}
        self._buckets: dict[Bucket, dict[str, DownstreamSession]] = {}

    def __iter__(self) -> Iterator[DownstreamSession]:
        return iter(list(self._by_key.values()))

    def __len__(self) -> int:
        return len(self._by_key)

    def get(self, key: str) -> DownstreamSession | None:
        return self._by_key.get(key)

    def count(self, route_id: str, virtual_key_id: str | None) -> int:
        return len(self._buckets.get((route_id, virtual_key_id), ()))

    def create(
        self, era: str, route_id: str, virtual_key_id: str | None
    ) -> tuple[DownstreamSession, DownstreamSession | None]:
        """A new handshake or sse session, and the one evicted to make room (to be closed).
        Raises SessionRefused."""
        evicted = self._make_room((route_id, virtual_key_id))
        key = secrets.token_hex(16)
        session = DownstreamSession(key, era, route_id, virtual_key_id)
        self._add(session)
        return session, evicted

    def stateless(
        self, route_id: str, virtual_key_id: str | None
    ) -> tuple[DownstreamSession, DownstreamSession | None]:
        key = f"stateless\x00{route_id}\x00{virtual_key_id or ''}"
        found = self._by_key.get(key)
        if found is not None:
            return found, None
        evicted = self._make_room((route_id, virtual_key_id))
        session = DownstreamSession(key, "modern", route_id, virtual_key_id)
        self._add(session)
        return session, evicted

    def remove(self, session: DownstreamSession) -> None:
        if self._by_key.get(session.key) is session:
            del self._by_key[session.key]
            bucket = (session.route_id, session.virtual_key_id)
            members = self._buckets.get(bucket)
            if members is not None:
                members.pop(session.key, None)
                if not members:
                    del self._buckets[bucket]

    def _add(self, session: DownstreamSession) -> None:
        self._by_key[session.key] = session
        bucket = (session.route_id, session.virtual_key_id)
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


def _number(value: Any) -> int | float | None:
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


class Registry:
    """What runs and what ran (reference §5.8 shapes)."""

    def __init__(self) -> None:
        self._inflight: dict[str, InFlight] = {}  # by request_key
        self._progress: dict[str, JsonObj] = {}
        self._history: deque[JsonObj] = deque(maxlen=HISTORY)
        self._failures: deque[JsonObj] = deque(maxlen=FAILURES)
        self._serial = 0

    def begin(
        self,
        session: DownstreamSession,
        route_id: str,
        request_id: RequestId,
        method: str,
        progress_token: Any,
    ) -> InFlight:
        rid = str(request_id)
        key = f"{session.short}:{rid}"
        if session.era == "modern":
            # Stateless clients sharing one (route, key) session pick their ids independently
            # (small counters): each call gets its own key, and none is findable by its id
            # alone (the modern era cancels by closing the stream, not by notification).
            self._serial += 1
            key = f"{key}#{self._serial}"
        entry = InFlight(
            route_id, rid, key, method, session.key, session.short, now_ms(), progress_token
        )
        self._inflight[key] = entry
        if session.era != "modern":
            session.inflight[rid] = entry
        return entry

    def end(self, session: DownstreamSession, entry: InFlight, error: str | None) -> None:
        if self._inflight.get(entry.request_key) is entry:
            del self._inflight[entry.request_key]
        if session.inflight.get(entry.request_id) is entry:
            del session.inflight[entry.request_id]
        if entry.progress_token is not None:
            self._progress.pop(self._progress_key(entry), None)
        done: JsonObj = {
            "route_id": entry.route_id,
            "request_id": entry.request_id,
            "request_key": entry.request_key,
            "method": entry.method,
            "started_at": entry.started_at,
            "completed_at": now_ms(),
        }
        if entry.cancelled_at is not None:
            done["cancelled"] = True
            done["cancel_reason"] = entry.cancel_reason
        if error:
            done["error"] = error[:500]  # (an upstream's own error message, any length)
        self._history.append(done)

    @staticmethod
    def _progress_key(entry: InFlight) -> str:
        return f"{entry.route_id}\x00{entry.request_key}\x00{entry.progress_token}"

    def progress(self) -> list[JsonObj]:
        return list(self._progress.values())

    def record_progress(self, entry: InFlight, params: JsonObj, method: str) -> None:
        key = self._progress_key(entry)
        if key not in self._progress and len(self._progress) >= PROGRESS:
            self._progress.pop(next(iter(self._progress)))
        item: JsonObj = {
            "route_id": entry.route_id,
            "progress_token": entry.progress_token,
            "progress_token_key": f"{entry.session_short}:{entry.progress_token}",
            "request_id": entry.request_id,
            "request_key": entry.request_key,
            "progress": _number(params.get("progress")),
            "last_method": method,
            "updated_at": now_ms(),
        }
        # kept for the admin view (1000 of them): what the upstream sent, bounded
        total, message = _number(params.get("total")), params.get("message")
        if total is not None:
            item["total"] = total
        if isinstance(message, str):
            item["message"] = message[:PROGRESS_MESSAGE_CHARS]
        self._progress[key] = item

    def inflight(self) -> list[JsonObj]:
        return [e.view() for e in self._inflight.values()]

    def find(self, route_id: str, request_id: str) -> list[InFlight]:
        """In-flight entries of the route whose request id or request key is ``request_id``."""
        return [
            e
            for e in self._inflight.values()
            if e.route_id == route_id and request_id in (e.request_id, e.request_key)
        ]

    def history(self, route_id: str | None = None) -> list[JsonObj]:
        return [h for h in self._history if route_id is None or h["route_id"] == route_id]

    def failed(self, route_id: str, service_id: str, method: str, error: str) -> None:
        self._failures.append(
            {
                "route_id": route_id,
                "service_id": service_id,
                "method": method,
                "error": error[:500],
                "at": now_ms(),
            }
        )

    def failures(self) -> list[JsonObj]:
        return list(self._failures)


# ------------------------------------------------------ one POST: its answer and usage rows

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(slots=True)
class Call:
    """The usage of one client JSON-RPC request (one ``mcp_usage_events`` row)."""

    started_ms: int = field(default_factory=now_ms)
    t0: int = field(default_factory=time.perf_counter_ns)
    # the span from the first upstream request's start to the last one's end (fan-outs run in
    # parallel): what the call waited on MCP servers; the rest of its time is the gateway's
    upstream_from_ns: int = 0
    upstream_to_ns: int = 0
    session: str | None = None  # the downstream session's handle (DownstreamSession.short)
    agent_session: str | None = None  # params._meta["agent-session-id"]
    request_id: str | None = None
    method: str | None = None
    service_id: str | None = None
    tool_name: str | None = None
    executed_tool_name: str | None = None
    policy_action: str | None = None
    resource_uri: str | None = None
    prompt_name: str | None = None
    completion_ref_type: str | None = None
    completion_argument: str | None = None
    arg_count: int | None = None
    result_status: str | None = None
    cancelled: bool = False
    tool_args: JsonObj | None = None
    status_code: int | None = None
    error_type: str | None = None
    error: str | None = None

    def waited(self, since_ns: int) -> None:
        """An upstream request that started at ``since_ns`` has just ended."""
        if not self.upstream_from_ns or since_ns < self.upstream_from_ns:
            self.upstream_from_ns = since_ns
        self.upstream_to_ns = time.perf_counter_ns()

    def overhead_ms(self) -> float:
        total = time.perf_counter_ns() - self.t0
        return max(0, total - (self.upstream_to_ns - self.upstream_from_ns)) / 1e6

    def fail(self, exc: RpcError, error_type: str | None = None) -> None:
        self.result_status = "cancelled" if self.cancelled else "error"
        self.error = exc.message
        if self.error_type is None:
            self.error_type = error_type or _ERROR_TYPES.get(exc.code, "request_failed")


_ERROR_TYPES = {
    rpc.PARSE_ERROR: "protocol_validation_failed",
    rpc.INVALID_REQUEST: "protocol_validation_failed",
    rpc.METHOD_NOT_FOUND: "method_not_found",
    rpc.INVALID_PARAMS: "invalid_params",
    rpc.INTERNAL_ERROR: "internal_error",
    rpc.UPSTREAM_FAILED: "upstream_failed",
    rpc.RESOURCE_NOT_FOUND: "resource_not_found",
    rpc.HEADER_MISMATCH: "protocol_validation_failed",
    rpc.UNSUPPORTED_PROTOCOL_VERSION: "protocol_validation_failed",
}


class Handler(Protocol):
    """The MCP server behind the ingress (:class:`agw.mcp.plane.McpServer`)."""

    modern_methods: frozenset[str]

    async def request(self, ctx: Context, msg: JsonObj, call: Call, entry: InFlight) -> JsonObj:
        """The response message (errors included; cancellation propagates)."""
        ...

    async def notification(self, ctx: Context, msg: JsonObj) -> None: ...

    async def response(self, ctx: Context, msg: JsonObj) -> None: ...

    def record(self, req: Request, call: Call) -> None: ...


@dataclass
class Context:
    req: Request
    session: DownstreamSession
    exchange: Exchange


def sse_event(msg: JsonObj | str, event: str = "message") -> bytes:
    data = msg if isinstance(msg, str) else json.dumps(msg, separators=(",", ":"))
    return f"event: {event}\ndata: {data}\n\n".encode()


class Exchange:
    """The answer to one POST: JSON, or an SSE stream once a message must go out first. A
    legacy (HTTP+SSE) exchange writes everything to the session's stream instead."""

    def __init__(
        self, req: Request, session: DownstreamSession, *, sse_ok: bool, legacy: bool = False
    ) -> None:
        self.req = req
        self.session = session
        self.sse_ok = sse_ok and not legacy
        self.legacy = legacy
        self.streaming = False
        self.finished = False
        self._lock = asyncio.Lock()

    def can_deliver(self) -> bool:
        """A message to the client would reach it (its SSE answer or a standalone stream)."""
        return (self.sse_ok and not self.finished) or self.session.stream is not None

    async def emit(self, msg: JsonObj) -> bool:
        """A message during a call: on this answer's SSE stream when the client takes SSE, else
        on the session's standalone stream; False when it had nowhere to go (dropped)."""
        if self.sse_ok and not self.finished:
            async with self._lock:
                if not self.finished:
                    if not self.streaming:
                        self.streaming = True
                        await self.req.start(200, list(SSE_HEADERS))
                    await self._send(sse_event(msg), more=True)
                    return True
        return self.session.push(msg)

    async def _send(self, data: bytes, *, more: bool) -> None:
        with contextlib.suppress(Exception):  # a client gone mid-stream: nothing to tell it
            await self.req.body(data, more)

    async def finish(
        self,
        responses: list[JsonObj],
        *,
        batch: bool,
        cancelled: list[JsonObj],
        headers: Headers | None = None,
    ) -> None:
        """Send the answers. ``cancelled``: the error answers of requests the client cancelled
        itself, sent only where an empty answer is impossible (a JSON-only client)."""
        async with self._lock:
            self.finished = True
            if self.legacy:
                for r in responses:
                    self.session.push(r)
                return
            if self.streaming:
                for r in responses:
                    await self._send(sse_event(r), more=True)
                await self._send(b"", more=False)
                return
            if not responses and self.sse_ok:
                await self.req.start(200, list(SSE_HEADERS))  # cancelled: an empty stream
                await self._send(b"", more=False)
                return
            out = responses or cancelled
            if not out:
                await self.req.respond(202, b"", headers=headers)
                return
            body: Any = out if batch else out[0]
            await self.req.respond(200, json.dumps(body).encode(), headers=headers)
