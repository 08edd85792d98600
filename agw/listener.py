"""Listener limits, the same on both servers (docs/security.md, "Listener limits").

What a client may hold before it has said anything worth answering:

- a request head (request line and header fields) of at most ``max_header_bytes`` and
  ``max_headers`` fields: over either, ``431 Request Header Fields Too Large`` and the
  connection is closed;
- ``header_timeout_s`` to send a complete head, counted from the connection's start, or from the
  first byte of a later request on a kept-alive connection: then the connection is closed
  without an answer (slowloris, half-sent heads). On uvicorn a sweeper looks every half
  period, so the close comes between 1 and 1.5 periods;
- a request body that makes no progress for ``header_timeout_s`` (while the app is waiting for
  it) is closed too: a slow body is slowloris again; so is a chunked body whose framing or
  trailer fields pass ``max_header_bytes`` without a body byte;
- ``keep_alive_timeout_s`` of silence between an answer and the next request's first byte;
- ``max_connections`` open connections per listener: one more gets ``503`` and is closed at
  once, before its request is read, and holds its descriptor for at most ``LINGER_S``.

A refused connection is half-closed after its answer and what the client still sends is read
and dropped until it closes (at most ``LINGER_S``): closing with unread bytes would reset the
connection and the client would never see the answer.

The data listener runs uvicorn with httptools (:func:`httptools_protocol`, a subclass of its
protocol whose per-request cost is a few counter updates, and :func:`sweep_httptools`, one task
per listener instead of a timer per request; its request cycles take the ``agw.head`` extension,
agw/head.py); the admin listener (and
``--data-server hypercorn``) runs hypercorn through :func:`serve_hypercorn`, its TCP server with
the same limits and HTTP/1.1 only (no h2c: neither API needs it, and it is one more parser to
bound).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import h11
import httptools
from hypercorn.asyncio.lifespan import Lifespan
from hypercorn.asyncio.statsd import StatsdLogger
from hypercorn.asyncio.task_group import TaskGroup
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol import ProtocolWrapper
from hypercorn.protocol.h11 import H11Protocol
from hypercorn.typing import AppWrapper, ConnectionState, LifespanState
from hypercorn.utils import parse_socket_addr, wrap_app
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from agw.edge import refuse_websockets
from agw.listener_cycle import headers_complete
from agw.settings import Settings

log = logging.getLogger(__name__)

LINGER_S = 2.0  # how long a refused connection may keep sending before it is closed
NOFILE_RESERVE = 256  # descriptors kept for the store, logs, stdio MCP servers, ACP agents


def _answer(status: int, reason: str, message: str) -> bytes:
    body = message.encode()
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


HEAD_TOO_LARGE = _answer(431, "Request Header Fields Too Large", "request head too large")
TOO_MANY_HEADERS = _answer(431, "Request Header Fields Too Large", "too many header fields")
OVER_CAPACITY = _answer(503, "Service Unavailable", "too many open connections")


@dataclass(slots=True)
class ListenerLimits:
    """The limits of one listener, and its count of refused connections still lingering."""

    max_header_bytes: int
    max_headers: int
    header_timeout_s: float
    keep_alive_timeout_s: float
    max_connections: int
    lingering: int = field(default=0, compare=False)

    @classmethod
    def from_settings(cls, settings: Settings, max_connections: int) -> ListenerLimits:
        return cls(
            settings.max_header_bytes,
            settings.max_headers,
            settings.header_timeout_s,
            settings.keep_alive_timeout_s,
            max_connections,
        )

    @property
    def may_linger(self) -> bool:
        """Refused connections linger (and see their answer) up to a bound; past it they are
        closed at once."""
        return self.lingering < max(64, self.max_connections // 4)


def connection_caps(requested: int) -> tuple[int, int]:
    """``(data, admin)`` connection caps. ``requested`` > 0 applies to each listener; 0 derives
    them from the open-file limit, raised to its hard limit first: every data connection may
    hold an upstream socket too, so the data listener gets half of what the admin listener and
    ``NOFILE_RESERVE`` leave."""
    infinity = resource.RLIM_INFINITY
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != infinity and (hard == infinity or soft < hard):
        target = hard if hard != infinity else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft == infinity:
        soft = 65536
    if requested > 0:
        return requested, requested
    budget = max(soft - NOFILE_RESERVE, 64)
    admin = max(16, min(1024, budget // 16))
    return max(16, (budget - admin) // 2), admin


class _Lingering(asyncio.Protocol):
    """A refused connection after its answer: drops what arrives, closes on the client's EOF
    or after ``LINGER_S``."""

    def __init__(self, transport: asyncio.Transport, limits: ListenerLimits) -> None:
        self.transport = transport
        self.limits = limits
        limits.lingering += 1
        self.timer = asyncio.get_running_loop().call_later(LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self.transport.close()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()
        self.limits.lingering -= 1


def refuse_transport(transport: asyncio.Transport, answer: bytes, limits: ListenerLimits) -> None:
    """Answer, half-close and drop the rest (or close at once past the lingering bound)."""
    transport.write(answer)
    if not limits.may_linger or not transport.can_write_eof():
        transport.close()
        return
    transport.set_protocol(_Lingering(transport, limits))
    transport.write_eof()
    with contextlib.suppress(RuntimeError):
        transport.resume_reading()


class _HeadTooLarge(Exception):
    pass


# uvicorn's callbacks, called directly: cheaper than super() on the per-request path
_on_body = HttpToolsProtocol.on_body
_on_message_complete = HttpToolsProtocol.on_message_complete


class LimitedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the listener limits. The head's bytes are counted as
    they arrive, before the parser buffers them (a single 100 MiB header never reaches it); the
    fields are counted in ``on_header``. The timeouts are kept by :func:`sweep_httptools`, one
    task per listener, so a request arms no timer: it only bumps counters.
    :func:`httptools_protocol` makes one subclass per listener, carrying its limits."""

    limits: ClassVar[ListenerLimits]

    def __init__(
        self,
        config: UvicornConfig,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.limits
        self._max_head = limits.max_header_bytes
        self._max_fields = limits.max_headers
        self._in_head = True  # no complete head since the last message (or the start)
        self._head_left = limits.max_header_bytes
        self._headers_left = limits.max_headers
        self._heads = 0  # heads completed on this connection
        self._received = 0  # bytes so far: a body makes progress while this grows
        # bytes since the body last moved: chunk framing and trailer fields, which the parser
        # buffers as it does header fields (a trailer is a header after the body)
        self._since_body = 0
        self._seen = (0, 0)  # (heads, received) at the last sweep
        self._strikes = 0  # sweeps in a row that found this connection stalled

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.limits.max_connections:
            self.transport = transport
            refuse_transport(transport, OVER_CAPACITY, self.limits)
            return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        # uvicorn's data_received, with the head budget: a chunk that would pass it is fed up
        # to the budget only, and the rest only if the head ended within it
        self._unset_keepalive_if_required()
        self._received += len(data)
        if self._in_head:
            if len(data) > self._head_left:
                cut = self._head_left
                self._head_left = 0
                if self._feed(data[:cut]) and not self.transport.is_closing():
                    if self._in_head:
                        self._refuse(HEAD_TOO_LARGE)
                    else:
                        self._feed(data[cut:])
                return
            self._head_left -= len(data)
        else:
            self._since_body += len(data)
        try:  # _feed, inlined: this is every request's path
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_failed(exc)
            return
        if self._since_body > self._max_head and not self._in_head:
            self._refuse(HEAD_TOO_LARGE)  # a trailer (or chunk framing) flood

    def _feed(self, data: bytes) -> bool:
        """Parse; False when the connection was answered and closed."""
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            return self._parse_failed(exc)
        return True

    def _parse_failed(self, exc: Exception) -> bool:
        # uvicorn's 400, and 431 for too many fields. An upgrade (WebSocket, h2c) is never
        # taken (the listener runs with ws="none"): the request is served as the plain HTTP
        # request it also is, in its route's dialect, and the connection closes after its
        # answer, since the parser stops at the upgrade (no warning logged per request)
        if isinstance(exc, httptools.HttpParserUpgrade):
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return True
        if isinstance(exc.__context__, _HeadTooLarge):
            self._refuse(TOO_MANY_HEADERS)
            return False
        msg = "Invalid HTTP request received."
        self.logger.warning(msg)
        self.send_400_response(msg)
        return False

    def _refuse(self, answer: bytes) -> None:
        self._unset_keepalive_if_required()
        self.connections.discard(self)
        if self.cycle is not None and not self.cycle.response_complete:
            # an answer is still being written on this connection: no room for another one
            self._close()
            return
        refuse_transport(self.transport, answer, self.limits)

    def _close(self) -> None:
        self.connections.discard(self)
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        self.transport.close()

    def sweep(self) -> None:
        """One look by the listener's sweeper. A connection is stalled while its head is
        incomplete (from its start, or from the next request's first byte), or while its body
        is incomplete and no byte came since the last look (and the app is not the one holding
        it up: flow control); three looks in a row that find it stalled, two sweep periods
        apart at least, close it."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        cycle = self.cycle
        seen = (self._heads, self._received)
        moved = seen[0] != self._seen[0] if self._in_head else seen != self._seen
        self._seen = seen
        if self._in_head:
            # idle between requests (the keep-alive timer's), or an answer still going out
            stalled = cycle is None or (
                cycle.response_complete and self.timeout_keep_alive_task is None
            )
        else:
            stalled = not self.flow.read_paused
        if not stalled:
            self._strikes = 0
        elif moved:
            self._strikes = 1
        else:
            self._strikes += 1
            if self._strikes >= 3:
                self._close()

    # parser callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers_left -= 1
        if self._headers_left < 0:
            raise _HeadTooLarge
        # uvicorn's on_header, inlined (this runs for every field of every request)
        name = name.lower()
        value = value.rstrip(b" \t")
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._since_body = 0
        self._heads += 1
        headers_complete(self)  # uvicorn's, with a cycle that takes rendered head lines

    def on_body(self, body: bytes) -> None:
        self._since_body = 0
        _on_body(self, body)

    def on_message_complete(self) -> None:
        self._in_head = True
        self._head_left = self._max_head
        self._headers_left = self._max_fields
        _on_message_complete(self)


async def sweep_httptools(connections: set[Any], limits: ListenerLimits) -> None:
    """The timeouts of one uvicorn listener: every half header timeout, each connection takes
    a look (:meth:`LimitedHttpTools.sweep`), so a stalled head or body is closed between 1 and
    1.5 header timeouts after it stalled. Runs until cancelled."""
    period = limits.header_timeout_s / 2
    while True:
        await asyncio.sleep(period)
        for connection in list(connections):
            if isinstance(connection, LimitedHttpTools):
                connection.sweep()


def httptools_protocol(limits: ListenerLimits) -> type[LimitedHttpTools]:
    """The protocol class to give ``uvicorn.Config(http=...)`` for a listener with ``limits``
    (uvicorn's keep-alive timeout is ``limits.keep_alive_timeout_s``: give it as
    ``timeout_keep_alive``)."""
    listener_limits = limits

    class Protocol(LimitedHttpTools):
        limits = listener_limits

    return Protocol


# hypercorn


class _Http1Protocol(H11Protocol):
    """hypercorn's HTTP/1.1, without the switch to HTTP/2 (h2c upgrade, prior knowledge), and
    with the header field count (h11 bounds the head's size: ``h11_max_incomplete_size``)."""

    max_headers = 100  # set per connection from the listener's limits

    async def _check_protocol(self, event: h11.Request) -> None:
        return None

    async def _create_stream(self, request: h11.Request) -> None:
        if len(request.headers) > self.max_headers:
            await self._send_error_response(431)
            await self.send(Closed())
            return
        await super()._create_stream(request)


class _LimitedTCPServer(TCPServer):
    """hypercorn's TCP server with the header and keep-alive timeouts kept apart (hypercorn has
    one idle timer, from an answer to the next complete head), HTTP/1.1 only, and refused
    connections half-closed and drained like the data listener's."""

    def __init__(
        self,
        app: AppWrapper,
        loop: asyncio.AbstractEventLoop,
        config: Config,
        context: WorkerContext,
        state: LifespanState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        limits: ListenerLimits,
    ) -> None:
        super().__init__(app, loop, config, context, state, reader, writer)
        self.limits = limits
        self._idle = False  # after an answer, before the next request's first byte
        self._closing: asyncio.TimerHandle | None = None

    async def run(self) -> None:
        # hypercorn's TCPServer.run, with the HTTP/1.1-only protocol
        sock = self.writer.get_extra_info("socket")
        try:
            client = parse_socket_addr(sock.family, sock.getpeername())
            server = parse_socket_addr(sock.family, sock.getsockname())
            async with TaskGroup(self.loop) as task_group:
                self._task_group = task_group
                self.protocol = ProtocolWrapper(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    False,
                    client,
                    server,
                    self.protocol_send,
                    "http/1.1",
                )
                http1 = _Http1Protocol(
                    self.app,
                    self.config,
                    self.context,
                    task_group,
                    ConnectionState(self.state),
                    False,
                    client,
                    server,
                    self.protocol_send,
                )
                http1.max_headers = self.limits.max_headers
                self.protocol.protocol = http1
                await self.idle_task.restart(task_group, self._idle_timeout)
                await self._read_data()
        except OSError:
            pass
        finally:
            if self._closing is not None:
                self._closing.cancel()
            await self._close()

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Closed):
            if self._closing is None:  # half-close; _read_data drops the rest, then closes
                with contextlib.suppress(OSError, RuntimeError):
                    self.writer.write_eof()
                self._closing = self.loop.call_later(LINGER_S, self.writer.close)
                await self.idle_task.stop()
            return
        if isinstance(event, Updated):
            self._idle = event.idle
        await super().protocol_send(event)

    def _body_pending(self) -> bool:
        connection = getattr(self.protocol.protocol, "connection", None)
        return isinstance(connection, h11.Connection) and connection.their_state is h11.SEND_BODY

    async def _read_data(self) -> None:
        while not self.reader.at_eof():
            try:
                if self._closing is None and self._body_pending():
                    # a request body must not stall for longer than the header timeout (the
                    # app taking its time does not count: hypercorn stops reading then)
                    read = self.reader.read(MAX_RECV)
                    data = await asyncio.wait_for(read, self.limits.header_timeout_s)
                else:
                    data = await self.reader.read(MAX_RECV)
            except (ConnectionError, OSError, TimeoutError):
                break
            if self._closing is not None:
                continue
            if self._idle and data:  # the next request begins: the header timeout from now
                self._idle = False
                await self.idle_task.restart(self._task_group, self._idle_timeout)
            await self.protocol.handle(RawData(data))
        # the client is gone: its idle timer must not hold the connection (and its place
        # under max_connections) until it fires, as hypercorn's own would
        await self.idle_task.stop()
        await self.protocol.handle(Closed())

    async def _idle_timeout(self) -> None:
        limits = self.limits
        timeout = limits.keep_alive_timeout_s if self._idle else limits.header_timeout_s
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.context.terminated.wait(), timeout)
        await asyncio.shield(self._initiate_server_close())


async def _refuse_stream(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, limits: ListenerLimits
) -> None:
    writer.write(OVER_CAPACITY)
    try:
        if limits.may_linger and writer.can_write_eof():
            limits.lingering += 1
            try:
                writer.write_eof()
                async with asyncio.timeout(LINGER_S):
                    while await reader.read(MAX_RECV):
                        pass
            finally:
                limits.lingering -= 1
    except (OSError, TimeoutError):
        pass
    finally:
        writer.close()


async def serve_hypercorn(
    app: Callable[..., Awaitable[None]],
    config: Config,
    sock: socket.socket,
    limits: ListenerLimits,
    shutdown_trigger: Callable[[], Awaitable[Any]],
) -> None:
    """hypercorn's ``serve`` for one bound socket, with ``limits`` (hypercorn's ``worker_serve``
    otherwise: lifespan, graceful shutdown within ``config.graceful_timeout``)."""
    config.set_statsd_logger_class(StatsdLogger)
    config.h11_max_incomplete_size = limits.max_header_bytes
    config.keep_alive_timeout = limits.keep_alive_timeout_s
    loop = asyncio.get_running_loop()
    wrapped = wrap_app(refuse_websockets(app), config.wsgi_max_body_size, "asgi")
    lifespan_state: LifespanState = {}
    lifespan = Lifespan(wrapped, config, loop, lifespan_state)
    lifespan_task = loop.create_task(lifespan.handle_lifespan())
    await lifespan.wait_for_startup()
    if lifespan_task.done() and (exc := lifespan_task.exception()) is not None:
        raise exc
    context = WorkerContext(None)
    tasks: set[asyncio.Task[Any]] = set()
    active = 0

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal active
        task = asyncio.current_task()
        if task is not None:
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if active >= limits.max_connections:
            await _refuse_stream(reader, writer, limits)
            return
        active += 1
        try:
            await _LimitedTCPServer(
                wrapped, loop, config, context, lifespan_state, reader, writer, limits
            )
        finally:
            active -= 1

    server = await asyncio.start_server(on_connection, backlog=config.backlog, sock=sock)
    try:
        await shutdown_trigger()
    finally:
        await context.terminated.set()
        server.close()
        await server.wait_closed()
        if tasks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait(tasks, timeout=config.graceful_timeout)
        await lifespan.wait_for_shutdown()
        lifespan_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await lifespan_task
