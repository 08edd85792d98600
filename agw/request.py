"""The :class:`Request` every plane receives, and its raw ASGI response helpers.

The data plane is a plain ASGI callable (no framework routing): the dispatcher matches a request
against the runtime snapshot once and builds a ``Request`` (route, headers, trace, principal); the
plane writes its answer with these helpers, which add the trace headers of the request to every
answer, and builds its usage event on :meth:`Request.usage_head`, the one place the columns every
usage table shares are filled in.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from agw.auth.principal import Principal
from agw.clock import now_ms
from agw.errors import PayloadTooLarge
from agw.head import EXTENSION, fields
from agw.ids import new_span_id, new_trace_id
from agw.runtime.snapshot import CompiledRoute, Snapshot
from agw.types import Headers, Receive, Scope, Send

log = logging.getLogger(__name__)


class ClientGone(Exception):
    """The client disconnected before the answer was complete."""


# Client-supplied trace values are bounded before they reach a row, a log or an upstream
# (docs/security.md): X-Agent-Depth at most MAX_AGENT_DEPTH (a longer number is refused with 400
# invalid_header), tracestate at most TRACESTATE_MAX characters (W3C's limit; a longer one is
# dropped, as the W3C spec allows).
MAX_AGENT_DEPTH = 1000
TRACESTATE_MAX = 512


@dataclass(slots=True)
class TraceContext:
    trace_id: str
    span_id: str
    parent_span_id: str | None
    depth: int  # inbound X-Agent-Depth, 0..MAX_AGENT_DEPTH
    tracestate: str | None = None
    invalid: str | None = None  # why a trace header was refused (the dispatcher answers 400)

    @classmethod
    def from_headers(cls, headers: dict[str, str]) -> TraceContext:
        trace_id, parent = "", None
        tp = headers.get("traceparent", "")
        parts = tp.split("-")
        if len(parts) == 4 and len(parts[1]) == 32 and len(parts[2]) == 16 and _hex(parts[1]):
            trace_id, parent = parts[1].lower(), parts[2].lower()
        elif _hex(headers.get("x-trace-id", "")) and len(headers["x-trace-id"]) == 32:
            trace_id = headers["x-trace-id"].lower()
            span = headers.get("x-span-id", "")
            parent = span.lower() if len(span) == 16 and _hex(span) else None
        if not trace_id or trace_id == "0" * 32:
            trace_id = new_trace_id()
        depth, invalid = 0, None
        raw_depth = headers.get("x-agent-depth", "")
        if raw_depth:
            # ASCII digits only: str.isdigit() also takes superscripts (latin-1 "²"), which int()
            # refuses
            if len(raw_depth) <= 6 and raw_depth.isascii() and raw_depth.isdigit():
                depth = int(raw_depth)
            if depth > MAX_AGENT_DEPTH or (not depth and raw_depth.strip("0")):
                depth = 0
                invalid = f"X-Agent-Depth must be an integer from 0 to {MAX_AGENT_DEPTH}"
        tracestate = headers.get("tracestate")
        if tracestate is not None and len(tracestate) > TRACESTATE_MAX:
            tracestate = None
        return cls(trace_id, new_span_id(), parent, depth, tracestate, invalid)

    def response_headers(self) -> Headers:
        out = [
            (b"traceparent", f"00-{self.trace_id}-{self.span_id}-01".encode()),
            (b"x-trace-id", self.trace_id.encode()),
            (b"x-span-id", self.span_id.encode()),
            (b"x-agent-depth", str(self.depth + 1).encode()),
        ]
        if self.tracestate:
            out.append((b"tracestate", self.tracestate.encode("latin-1")))
        return out


# The trace of the data-plane request being served, set by the dispatcher: code that calls an
# upstream on the request's behalf (an MCP server over HTTP) reads it for ``traceparent``. Tasks
# a request starts inherit it.
current_trace: ContextVar[TraceContext | None] = ContextVar("agw_current_trace", default=None)

# The caller's own bearer JWT, set by the dispatcher for a JWT principal: an MCP service with
# ``forward_client_token: true`` sends it upstream; nothing else ever reads it.
current_client_token: ContextVar[str | None] = ContextVar("agw_client_token", default=None)


def traceparent(trace: TraceContext) -> str:
    """The W3C ``traceparent`` an upstream call made for this request carries: the request's
    trace, its gateway span as the parent."""
    return f"00-{trace.trace_id}-{trace.span_id}-01"


_HEX = frozenset("0123456789abcdefABCDEF")


def _hex(text: str) -> bool:
    return bool(text) and _HEX.issuperset(text)


@dataclass(slots=True)
class Request:
    scope: Scope
    receive: Receive
    send: Send
    snapshot: Snapshot
    route: CompiledRoute
    path: str  # with the route's path_prefix stripped, always starting with "/"
    method: str
    headers: dict[str, str]  # lower-case names; repeated headers joined with ", "
    trace: TraceContext
    principal: Principal | None = None  # who is calling: set by the identity step
    session_id: str | None = None  # the agent session the request belongs to (attribution)
    acp_session_id: str | None = None  # the gateway-run ACP session it came from, if any
    started: bool = False  # the response start has been sent
    body_read: bool = False  # the whole request body has been received
    status: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # limits (agw/policy/limits.py): the request's hold on its counters, the headers every
    # answer carries (RateLimit-Policy, RateLimit, warnings), and what a limit did to it
    admission: Any = None
    limit_headers: Headers | None = None
    limit_head: bytes = b""  # the same as checked head lines (agw/head.py): every answer's too
    limit_id: str | None = None
    limit_action: str | None = None
    # called once, just before the last bytes of a whole answer (:meth:`respond`) go out: a
    # plane records its usage row there, so the row is in the usage spool before the client
    # can have the answer (docs/observability.md, "The usage spool")
    on_answer: Callable[[], None] | None = None

    @property
    def media_type(self) -> str:
        """The body's media type as the client named it: ``Content-Type`` without parameters,
        lower case ("" without one). A body a browser may send cross-site without a CORS
        preflight is never ``application/json`` (docs/security.md). The exact value most
        clients send is returned as it is, without parsing (every JSON POST asks)."""
        value = self.headers.get("content-type", "")
        if value == "application/json":
            return value
        return value.partition(";")[0].strip().lower()

    @property
    def virtual_key_id(self) -> str | None:
        principal = self.principal
        return principal.key_id if principal is not None else None

    @property
    def owner_id(self) -> str | None:
        """Whose sessions this caller may use: its virtual key, or its JWT's provider and
        subject (agw/auth/principal.py); None on an open route."""
        principal = self.principal
        return principal.owner if principal is not None else None

    def usage_head(
        self, started_at: int, status: int, error_type: str | None = None
    ) -> dict[str, Any]:
        """The columns every usage table shares, as keyword arguments of a usage event: trace,
        route, caller (the principal's key id, user and org), session, outcome and timings. A
        plane adds only what is its own."""
        trace = self.trace
        route = self.route
        principal = self.principal
        if principal is None:
            key_id = user_id = org_id = None
        else:
            key_id, user_id, org_id = principal.key_id, principal.user, principal.org
        return {
            "trace_id": trace.trace_id,
            "span_id": trace.span_id,
            "parent_span_id": trace.parent_span_id,
            "agent_depth": trace.depth,
            "started_at": started_at,
            "finished_at": now_ms(),
            "route_id": route.id,
            "route_protocol": route.protocol,
            "virtual_key_id": key_id,
            "user_id": user_id,
            "org_id": org_id,
            "success": status < 400 and error_type is None,
            "status_code": status,
            "error_type": error_type,
            "session_id": self.session_id,
            "agent_id": route.agent_id,
            "http_method": self.method,
            "http_path": self.scope["path"],
            "limit_id": self.limit_id,
            "limit_action": self.limit_action,
        }

    @property
    def query(self) -> str:
        return bytes(self.scope.get("query_string", b"")).decode("latin-1")

    async def read_body(self, limit: int) -> bytes:
        declared = self.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise PayloadTooLarge(f"request body larger than {limit} bytes")
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                raise PayloadTooLarge(f"request body larger than {limit} bytes")
            chunks.append(body)
            if not message.get("more_body", False):
                self.body_read = True
                return b"".join(chunks)

    async def start(self, status: int, headers: Headers) -> None:
        self.started = True
        self.status = status
        out = headers + (self.limit_headers or []) + self.trace.response_headers()
        await self.send(self._start(status, out))

    def _start(self, status: int, headers: Headers) -> dict[str, Any]:
        """The ``http.response.start`` message, with the ``limit_head`` lines as the server
        takes them (agw/head.py)."""
        message = {"type": "http.response.start", "status": status, "headers": headers}
        if self.limit_head:
            extensions = self.scope.get("extensions")  # does the server take the lines?
            if extensions is not None and EXTENSION in extensions:
                message[EXTENSION] = self.limit_head
            else:
                headers += fields(self.limit_head)
        return message

    async def body(self, data: bytes, more: bool = False) -> None:
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    def close_if_unread(self) -> Headers:
        """``Connection: close`` for an answer sent before the request body was read: the rest
        of the body would otherwise be taken for the next request on a kept-alive connection."""
        if self.body_read or self.method in ("GET", "HEAD"):
            return []
        return [(b"connection", b"close")]

    async def respond(
        self,
        status: int,
        body: bytes,
        content_type: bytes = b"application/json",
        headers: Headers | None = None,
    ) -> None:
        self.started = True
        self.status = status
        out = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
        if headers:
            out += headers
        if self.limit_headers:
            out += self.limit_headers
        out += self.trace.response_headers()
        if self.on_answer is not None:
            on_answer, self.on_answer = self.on_answer, None
            try:  # a failed record must not cost the client its answer
                on_answer()
            except Exception:
                log.exception("answer_hook_failed", extra={"route_id": self.route.id})
        send = self.send  # no start()/body() frames: this is every JSON answer
        if self.limit_head:
            await send(self._start(status, out))
        else:
            await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def watch_disconnect(self) -> None:
        """Returns when the client goes away (run as a task beside a long answer)."""
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                return


# How long an answer runs before a watcher task starts listening for the client's disconnect:
# most answers are done sooner and never pay for a task (creating one and cancelling it cost
# about 20 us, a tenth of the gateway's CPU per request); a longer one is cancelled at most this
# much later than the client left.
WATCH_AFTER_S = 0.05


class DisconnectWatch:
    """``async with DisconnectWatch(req) as watch: await work``: once the work has run for
    ``WATCH_AFTER_S``, a watcher task cancels it as soon as the client disconnects, and the block
    ends quietly with ``watch.gone`` set.

    A context manager, not a wrapper coroutine, so the work runs with no extra frame between it
    and the request's task: every resumption of a coroutine walks the whole chain of awaiting
    frames, and on the hot path each level is measurable. Start it only once the request body
    has been read (the watcher consumes ``receive``)."""

    __slots__ = ("_current", "_req", "_timer", "_watcher", "gone")

    def __init__(self, req: Request) -> None:
        self._req = req
        self.gone = False
        self._current: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def _watch(self) -> None:
        await self._req.watch_disconnect()
        self.gone = True
        assert self._current is not None
        self._current.cancel()

    def _start(self) -> None:
        self._timer = None
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def __aenter__(self) -> DisconnectWatch:
        loop = asyncio.get_running_loop()
        self._current = asyncio.current_task(loop)
        self._timer = loop.call_later(WATCH_AFTER_S, self._start)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> bool:
        assert self._current is not None
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        if exc_type is not None and issubclass(exc_type, asyncio.CancelledError) and self.gone:
            self._current.uncancel()
            return True
        return False
