"""The draft ACP Streamable HTTP transport at ``<route>/acp``: an editor, or the ACP SDK's HTTP
client (``acp.http.create_http_stream``), drives the route's pooled agent through the gateway.

Wire (the RFD, as the SDK 0.12.1 speaks it): ``POST initialize`` answers 200 with the JSON-RPC
response and an ``Acp-Connection-Id`` header; every other POST carries that header (and
``Acp-Session-Id`` for ``session/prompt``, ``session/cancel``, ``session/set_mode``,
``session/set_config_option``, ``session/close``) and answers 202 at once: the JSON-RPC answers
come on SSE streams (``data: <message>``, a ``: keepalive`` comment every 15 s), ``GET`` with the
connection id (the connection stream: answers to connection-level requests, ``session/new``
included) or with both ids (the session stream: ``session/update`` notifications, the agent's
``session/request_permission`` requests, answers to session-scoped requests). ``DELETE`` ends
the connection. Messages wait in a stream's buffer until its GET is open (and while it reads
slowly: :class:`Outbox`, bounded); one GET per stream at a time (a second: 409).

What the gateway does with each message:

- ``initialize``: the agent's ``initialize`` result (taken once per service configuration from a
  transient process), with what the gateway relays: ``loadSession`` false, no
  ``sessionCapabilities``, ``mcpCapabilities`` http/sse false (the client's ``mcpServers`` are
  not passed on: with ``gateway_origin`` the gateway gives its own), ``authMethods`` empty (the
  virtual key is the authentication). The connection belongs to the route and the virtual key
  that opened it: any other gets 404 for its id; its sessions are scoped to, and owned by, that
  route and principal (:meth:`HttpConnection.turn`), as a ``/turn``'s are.
- ``session/new {cwd}``: a pooled instance of its own (thread ``acp-http-<connection>-<n>``),
  as a turn would start one (``cwd`` inside ``allowed_roots``, ``max_instances`` counted);
  answer ``{sessionId, configOptions}``.
- ``session/prompt``: the session's scope is leased for the prompt (a second prompt meanwhile:
  the busy-scope error); the prompt content goes to the agent unchanged; every update of the
  session is relayed while the session lives (tail chunks after the result included).
  Permission requests follow the service's ``permission_mode``; ``interactive`` relays them to
  the client as ``session/request_permission`` with the pending id ``perm-<hex>`` as JSON-RPC id
  (the admin API sees and can answer them too; 60 s timeout, as for SSE turns); the answer is
  taken only from a connection of the same route and principal.
- ``session/cancel``, ``session/set_mode``, ``session/set_config_option``: to the agent;
  ``session/close``: the instance is closed. ``authenticate``: ``{}``. Anything else
  (``session/load``, ``session/list``, ``session/resume``, ...): ``-32601``.
- ``DELETE``, or 30 minutes without a request and without an open stream: the connection's
  instances are closed (their process groups killed) and its pending permissions cancelled.

Usage rows: ``initialize``, ``session_new``, ``session_cancel``, ``session_config``,
``session_close``, ``permission`` (a client's answer), ``stream`` (a GET, when it ends),
``close`` (DELETE), one per HTTP request; a prompt is one ``turn`` row written when it ends (its
POST writes none), with the session's relayed update kinds counted as the SSE events of a turn
would be.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agw.acp.connection import AcpError, AgentRpcError
from agw.acp.events import map_update, update_of
from agw.acp.permissions import auto_approve, cancelled
from agw.acp.plane import (
    BODY_LIMIT,
    INTERNAL,
    AcpPlane,
    HttpError,
    Op,
    error_type_of,
    json_reply,
    require_json,
)
from agw.acp.runtime import Instance, TurnRequest, owner_key, principal_of, signature
from agw.config.acp import AcpService
from agw.jsonfast import loads
from agw.request import Request
from agw.rpcids import ID_MAX_CHARS, METHOD_MAX_CHARS, valid_id
from agw.types import JsonObj

log = logging.getLogger(__name__)


CONNECTION_HEADER = "acp-connection-id"
SESSION_HEADER = "acp-session-id"
KEEPALIVE_S = 15.0
METHOD_NOT_RELAYED = "method_not_found"  # usage error_type of a method the gateway does not relay
IDLE_CLOSE_S = 1800.0
SWEEP_EVERY_S = 60.0
BUFFER_LIMIT = 4096  # messages waiting for a stream's GET; beyond, the oldest are dropped...
BUFFER_BYTES = 16 * 1024 * 1024  # ...and beyond this many bytes of them
REQUEST_TIMEOUT_S = 30.0  # set_mode / set_config_option to the agent
# Connections one principal may hold on one route: each has a buffer of up to BUFFER_BYTES, so
# without a bound a client could make the gateway hold any multiple of it. A new connection
# beyond the quota closes the principal's own least recently used one (never another's).
CONNECTIONS_PER_PRINCIPAL = 32
CWD_MAX_CHARS = 4096  # a session/new cwd (PATH_MAX), echoed in errors
SESSION_SCOPED = frozenset(
    {
        "session/prompt",
        "session/cancel",
        "session/set_mode",
        "session/set_config_option",
        "session/close",
    }
)
OPERATIONS = {
    "session/new": "session_new",
    "session/cancel": "session_cancel",
    "session/set_mode": "session_config",
    "session/set_config_option": "session_config",
    "session/close": "session_close",
}
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603


class Outbox:
    """The messages of one SSE stream, buffered (rendered as SSE frames) until, and while, its
    GET reads them: at most :data:`BUFFER_LIMIT` messages and :data:`BUFFER_BYTES` bytes, the
    oldest dropped beyond (logged)."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._bytes = 0
        self.reading = False
        self.closed = False
        self.dropped = 0

    def push(self, msg: JsonObj) -> None:
        if self.closed:
            return
        data = json.dumps(msg, separators=(",", ":"), ensure_ascii=False)
        frame = f"data: {data}\n\n".encode()
        self._queue.put_nowait(frame)
        self._bytes += len(frame)
        while self._queue.qsize() > 1 and (
            self._queue.qsize() > BUFFER_LIMIT or self._bytes > BUFFER_BYTES
        ):
            old = self._queue.get_nowait()
            self._bytes -= len(old or b"")
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("acp_http_buffer_full", extra={"dropped": self.dropped})

    async def get(self) -> bytes | None:
        frame = await self._queue.get()
        self._bytes -= len(frame or b"")
        return frame

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)


@dataclass(eq=False)
class HttpSession:
    session_id: str
    thread_id: str
    cwd: str
    instance: Instance
    outbox: Outbox = field(default_factory=Outbox)
    unsubscribe: Callable[[], None] | None = None
    counts: dict[str, int] | None = None  # the running prompt's relayed update kinds
    last_usage: JsonObj | None = None


@dataclass(eq=False)
class HttpConnection:
    id: str
    route_id: str
    service_id: str
    virtual_key_id: str | None
    outbox: Outbox = field(default_factory=Outbox)
    sessions: dict[str, HttpSession] = field(default_factory=dict)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    last_seen: float = field(default_factory=time.monotonic)
    streams: int = 0
    count: int = 0

    @property
    def thread_prefix(self) -> str:
        return f"acp-http-{self.id[:12]}"

    @property
    def principal(self) -> str:
        return principal_of(self.virtual_key_id)

    @property
    def owner(self) -> str:
        return owner_key(self.route_id, self.principal)

    def turn(self, thread_id: str, cwd: str) -> TurnRequest:
        """The runtime request of this connection's session (scoped to its route and key)."""
        return TurnRequest(
            thread_id=thread_id,
            input="",
            cwd=cwd,
            route_id=self.route_id,
            principal=self.principal,
        )


def _rpc_error(msg_id: Any, code: int, message: str) -> JsonObj:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def _rpc_result(msg_id: Any, result: Any) -> JsonObj:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def _error_of(exc: AcpError) -> tuple[int, str]:
    if isinstance(exc, AgentRpcError):
        return exc.code, exc.rpc_message
    return (INVALID_PARAMS if exc.status < 500 else INTERNAL_ERROR), exc.message


class HttpTransport:
    """``<route>/acp`` of every ACP route (see the module docstring)."""

    def __init__(self, plane: AcpPlane) -> None:
        self.plane = plane
        self.runtime = plane.runtime
        self.connections: dict[str, HttpConnection] = {}
        self._init_cache: dict[str, tuple[str, JsonObj]] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def _watch_idle(self) -> None:
        """While connections exist, look for idle ones every minute: an abandoned connection
        must not keep its agents running until some other client happens to connect."""
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep_loop())

    async def _sweep_loop(self) -> None:
        while self.connections:
            await asyncio.sleep(SWEEP_EVERY_S)
            self._sweep()

    def drain(self) -> None:
        """End every open stream (the server is stopping: they would hold its shutdown)."""
        for conn in self.connections.values():
            conn.outbox.close()
            for session in conn.sessions.values():
                session.outbox.close()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for conn in list(self.connections.values()):
            await self._drop(conn, "shutdown")
        if self._background:
            await asyncio.wait(set(self._background))

    # --------------------------------------------------------------------------- entry

    async def handle(self, req: Request, op: Op, service: AcpService) -> None:
        if req.method == "POST":
            await self._post(req, op, service)
        elif req.method == "GET":
            await self._get(req, op)
        elif req.method == "DELETE":
            op.operation = "close"
            conn = self._connection(req)
            await self._drop(conn, "deleted")
            op.status = 202
            await req.respond(202, b"")
        else:
            raise HttpError(405, "method not allowed")

    def _connection(self, req: Request) -> HttpConnection:
        cid = req.headers.get(CONNECTION_HEADER, "").strip()
        if not cid:
            raise HttpError(400, "Missing connection id")
        conn = self.connections.get(cid)
        if (
            conn is None
            or conn.route_id != req.route.id
            or conn.virtual_key_id != req.virtual_key_id
        ):
            raise HttpError(404, "Unknown connection id")
        conn.last_seen = time.monotonic()
        return conn

    async def _post(self, req: Request, op: Op, service: AcpService) -> None:
        require_json(req)
        body = await req.read_body(BODY_LIMIT)
        try:
            msg = loads(body)
        except (ValueError, RecursionError) as exc:
            raise HttpError(400, f"decode request: {exc}") from None
        if isinstance(msg, list):
            raise HttpError(501, "Batch requests are not supported")
        if not isinstance(msg, dict):
            raise HttpError(400, "Invalid JSON-RPC message")
        method = msg.get("method")
        # the id and the method are echoed in answers that wait in the connection's buffer:
        # bounded, as the MCP plane bounds them
        if ("id" in msg and not valid_id(msg["id"])) or (
            isinstance(method, str) and len(method) > METHOD_MAX_CHARS
        ):
            raise HttpError(
                400,
                f"Invalid JSON-RPC message: the id must be a string of at most {ID_MAX_CHARS} "
                f"characters or an integer, the method at most {METHOD_MAX_CHARS} characters",
            )
        if method == "initialize" and "id" in msg:
            op.operation = "initialize"
            await self._initialize(req, op, service, msg)
            return
        conn = self._connection(req)
        if method is None:
            op.operation = "permission"
            self._client_response(conn, msg, op)
            op.status = 202
            await req.respond(202, b"")
            return
        if not isinstance(method, str):
            raise HttpError(400, "Invalid JSON-RPC message")
        op.operation = OPERATIONS.get(method, method)
        sid = req.headers.get(SESSION_HEADER, "").strip()
        if method in SESSION_SCOPED and not sid:
            raise HttpError(400, "Missing session id header")
        session = conn.sessions.get(sid) if sid else None
        if sid and session is None:
            raise HttpError(404, "Unknown session id")
        op.session_id = sid or None
        if "id" not in msg:  # a notification
            if method == "session/cancel" and session is not None:
                with contextlib.suppress(AcpError):
                    await session.instance.connection.notify(
                        "session/cancel", {"sessionId": session.session_id}
                    )
            op.status = 202
            await req.respond(202, b"")
            return
        params = msg.get("params")
        params = params if isinstance(params, dict) else {}
        # The row is written when the answer is known (202 only says it was accepted); a
        # prompt's row is its turn's, written when the turn ends.
        op.skip = True
        task = asyncio.create_task(
            self._request(req, conn, session, service, msg["id"], method, params, op)
        )
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)
        op.status = 202
        await req.respond(202, b"")

    async def _initialize(self, req: Request, op: Op, service: AcpService, msg: JsonObj) -> None:
        self._sweep()
        try:
            agent = await self._agent_init(service)
        except AcpError as exc:
            op.fail(error_type_of(exc))
            op.status = exc.status
            await json_reply(req, exc.status, _rpc_error(msg["id"], *_error_of(exc)))
            return
        caps = dict(agent.get("agentCapabilities") or {})
        caps["loadSession"] = False
        caps["sessionCapabilities"] = {}
        caps["mcpCapabilities"] = {"http": False, "sse": False}
        result: JsonObj = {"protocolVersion": 1, "agentCapabilities": caps, "authMethods": []}
        if isinstance(agent.get("agentInfo"), dict):
            result["agentInfo"] = agent["agentInfo"]
        conn = HttpConnection(secrets.token_hex(16), req.route.id, service.id, req.virtual_key_id)
        self._make_room(conn)
        self.connections[conn.id] = conn
        self._watch_idle()
        op.status = 200
        op.result_status = "success"
        await json_reply(
            req,
            200,
            _rpc_result(msg["id"], result),
            [(b"acp-connection-id", conn.id.encode())],
        )

    async def _agent_init(self, service: AcpService) -> JsonObj:
        sig = signature(service)
        cached = self._init_cache.get(service.id)
        if cached is not None and cached[0] == sig:
            return cached[1]
        async with self.runtime.transient(service, "") as agent:
            result = dict(agent.init_result)
        self._init_cache[service.id] = (sig, result)
        return result

    # ------------------------------------------------------------------- requests

    async def _request(
        self,
        req: Request,
        conn: HttpConnection,
        session: HttpSession | None,
        service: AcpService,
        msg_id: Any,
        method: str,
        params: JsonObj,
        op: Op,
    ) -> None:
        out = session.outbox if session is not None else conn.outbox
        try:
            if method == "session/new":
                out.push(_rpc_result(msg_id, await self._new_session(conn, service, params)))
            elif method == "session/prompt" and session is not None:
                await self._prompt(req, conn, session, service, msg_id, params)
            elif method in ("session/set_mode", "session/set_config_option") and session:
                instance = session.instance
                result = await instance.connection.request(
                    method, {**params, "sessionId": session.session_id}, timeout=REQUEST_TIMEOUT_S
                )
                if isinstance(result, dict):
                    instance.set_config_options(result.get("configOptions"))
                out.push(_rpc_result(msg_id, result))
            elif method == "session/close" and session is not None:
                await self._close_session(conn, service.id, session)
                out.push(_rpc_result(msg_id, {}))
                out.close()
            elif method == "authenticate":
                out.push(_rpc_result(msg_id, {}))
            else:
                op.fail(METHOD_NOT_RELAYED)
                out.push(
                    _rpc_error(msg_id, METHOD_NOT_FOUND, f"{method} is not relayed by the gateway")
                )
        except AcpError as exc:
            op.fail(error_type_of(exc))
            out.push(_rpc_error(msg_id, *_error_of(exc)))
        except Exception:
            log.exception("acp_http_request_failed", extra={"method": method})
            op.fail(INTERNAL)
            out.push(_rpc_error(msg_id, INTERNAL_ERROR, "internal gateway error"))
        finally:
            if not (method == "session/prompt" and session is not None):
                op.skip = False
                self.plane.record(req, op)

    async def _new_session(
        self, conn: HttpConnection, service: AcpService, params: JsonObj
    ) -> JsonObj:
        cwd = params.get("cwd")
        if isinstance(cwd, str) and len(cwd) > CWD_MAX_CHARS:
            raise AcpError(f"cwd must be at most {CWD_MAX_CHARS} characters", status=400)
        conn.count += 1
        thread = f"{conn.thread_prefix}-{conn.count}"
        turn = conn.turn(thread, cwd if isinstance(cwd, str) else "")
        lease = await self.runtime.acquire(service, turn)
        async with lease:
            instance = lease.instance
        session = HttpSession(instance.session_id, thread, turn.cwd, instance)
        self._subscribe(session)
        conn.sessions[session.session_id] = session
        result: JsonObj = {"sessionId": session.session_id}
        options = instance.config_options()
        if options:
            result["configOptions"] = options
        return result

    def _subscribe(self, session: HttpSession) -> None:
        if session.unsubscribe is not None:
            session.unsubscribe()

        async def relay(params: JsonObj) -> None:
            update = update_of(params, session.session_id)
            if update is None:
                return
            session.outbox.push({"jsonrpc": "2.0", "method": "session/update", "params": params})
            if session.counts is not None:
                event = map_update(update)
                if event is not None:
                    session.counts[event.name] = session.counts.get(event.name, 0) + 1
                    if event.name == "usage" and isinstance(event.payload.get("data"), dict):
                        session.last_usage = event.payload["data"]

        session.unsubscribe = session.instance.connection.subscribe(relay)

    async def _prompt(
        self,
        req: Request,
        conn: HttpConnection,
        session: HttpSession,
        service: AcpService,
        msg_id: Any,
        params: JsonObj,
    ) -> None:
        op = Op("turn", service_id=service.id, agent_type=service.agent_type)
        op.thread_id, op.session_id, op.fresh_session = session.thread_id, session.session_id, False
        op.status = 200
        session.counts, session.last_usage = {}, None
        try:
            turn = conn.turn(session.thread_id, session.cwd)
            lease = await self.runtime.acquire(service, turn)
            async with lease:
                instance = lease.instance
                if instance.session_id != session.session_id:
                    raise AcpError("the agent of this session is gone; open a new session")
                if instance is not session.instance:  # restarted after a crash: same session
                    session.instance = instance
                    self._subscribe(session)
                agent = instance.connection
                agent.permission_handler = self._permission_handler(conn, session, service)
                try:
                    result = await agent.request(
                        "session/prompt", {**params, "sessionId": session.session_id}
                    )
                finally:
                    agent.permission_handler = None
                    self.plane.permissions.cancel_owned(session)
            stop = result.get("stopReason") if isinstance(result, dict) else None
            if isinstance(result, dict) and isinstance(result.get("usage"), dict):
                session.last_usage = result["usage"]
            op.result_status = "cancelled" if stop == "cancelled" else "success"
            op.stop_reason = stop if isinstance(stop, str) else None
            session.outbox.push(_rpc_result(msg_id, result))
        except AcpError as exc:
            op.fail(error_type_of(exc))
            session.outbox.push(_rpc_error(msg_id, *_error_of(exc)))
        except asyncio.CancelledError:  # the connection was closed under it
            op.status, op.error_type, op.result_status = 499, "client_cancelled", "cancelled"
            raise
        finally:
            op.event_counts, op.usage = session.counts, session.last_usage
            session.counts = None
            self.plane.record(req, op)

    def _permission_handler(
        self, conn: HttpConnection, session: HttpSession, service: AcpService
    ) -> Callable[[JsonObj], Any]:
        registry = self.plane.permissions

        async def handler(params: JsonObj) -> JsonObj:
            if service.permission_mode == "auto_approve":
                return auto_approve(params)
            if service.permission_mode != "interactive":
                return cancelled()
            entry = registry.open(
                service.id, session.session_id, params, owner=session, principal=conn.owner
            )
            session.outbox.push(
                {
                    "jsonrpc": "2.0",
                    "id": entry.request_id,
                    "method": "session/request_permission",
                    "params": params,
                }
            )
            return await registry.wait(entry)

        return handler

    def _client_response(self, conn: HttpConnection, msg: JsonObj, op: Op) -> None:
        """The client's answer to a relayed ``session/request_permission``."""
        request_id = msg.get("id")
        if not isinstance(request_id, str):
            op.fail("protocol_validation_failed")
            return
        op.permission_request_id = request_id
        result = msg.get("result")
        outcome = result.get("outcome") if isinstance(result, dict) else None
        chosen = outcome.get("outcome") if isinstance(outcome, dict) else None
        option = outcome.get("optionId") if isinstance(outcome, dict) else None
        registry = self.plane.permissions
        entry = registry.get(request_id)
        if entry is None or entry.service_id != conn.service_id or entry.principal != conn.owner:
            op.fail("permission_not_found")
            return
        op.session_id = entry.session_id
        scope = {"service_id": conn.service_id, "principal": conn.owner}
        try:
            if chosen == "selected" and isinstance(option, str) and option:
                ok = registry.resolve(request_id, "selected", option, **scope)
            else:
                ok = registry.resolve(request_id, "cancelled", **scope)
        except Exception:  # an option it was not offered: fail closed
            ok = registry.resolve(request_id, "cancelled", **scope)
        if not ok:
            op.fail("permission_not_found")
        else:
            op.result_status = "success"

    # ------------------------------------------------------------------------ streams

    async def _get(self, req: Request, op: Op) -> None:
        op.operation = "stream"
        conn = self._connection(req)
        sid = req.headers.get(SESSION_HEADER, "").strip()
        outbox = conn.outbox
        if sid:
            session = conn.sessions.get(sid)
            if session is None:
                raise HttpError(404, "Unknown session id")
            outbox = session.outbox
            op.session_id = sid
        if outbox.reading:
            raise HttpError(409, "a stream is already open for this id")
        outbox.reading = True
        conn.streams += 1
        watcher = asyncio.create_task(req.watch_disconnect())
        try:
            await req.start(
                200,
                [
                    (b"content-type", b"text/event-stream"),
                    (b"cache-control", b"no-cache"),
                    (b"x-accel-buffering", b"no"),
                ],
            )
            op.status = 200
            await self._pump(req, outbox, watcher)
        finally:
            outbox.reading = False
            conn.streams -= 1
            conn.last_seen = time.monotonic()
            watcher.cancel()
            await asyncio.wait({watcher})
        with contextlib.suppress(Exception):
            await req.body(b"", False)
        op.result_status = "success"

    async def _pump(self, req: Request, outbox: Outbox, watcher: asyncio.Task[None]) -> None:
        getter: asyncio.Task[bytes | None] | None = None
        try:
            while not watcher.done():
                if getter is None:
                    getter = asyncio.create_task(outbox.get())
                done, _ = await asyncio.wait(
                    {getter, watcher}, timeout=KEEPALIVE_S, return_when=asyncio.FIRST_COMPLETED
                )
                if getter in done:
                    frame = getter.result()
                    getter = None
                    if frame is None:
                        return
                    await req.body(frame, True)
                elif not done:
                    await req.body(b": keepalive\n\n", True)
        finally:
            if getter is not None:
                getter.cancel()

    # ------------------------------------------------------------------------ closing

    async def _close_session(
        self, conn: HttpConnection, service_id: str, session: HttpSession
    ) -> None:
        if session.unsubscribe is not None:
            session.unsubscribe()
        conn.sessions.pop(session.session_id, None)
        self.plane.permissions.cancel_owned(session)
        await self.runtime.close_thread(service_id, session.thread_id)

    async def _drop(self, conn: HttpConnection, reason: str) -> None:
        if self.connections.pop(conn.id, None) is None:
            return
        await self._finish(conn, reason)

    async def _finish(self, conn: HttpConnection, reason: str) -> None:
        """Close a connection already taken out of :attr:`connections`."""
        for task in list(conn.tasks):
            task.cancel()
        if conn.tasks:  # their leases released before the instances close
            await asyncio.wait(set(conn.tasks))
        for session in list(conn.sessions.values()):
            await self._close_session(conn, conn.service_id, session)
            session.outbox.close()
        conn.outbox.close()
        log.info("acp_http_connection_closed", extra={"reason": reason})

    def _make_room(self, new: HttpConnection) -> None:
        """At the quota, close the least recently used connections of ``new``'s route and
        principal (:data:`CONNECTIONS_PER_PRINCIPAL`)."""
        own = [
            c
            for c in self.connections.values()
            if c.route_id == new.route_id and c.virtual_key_id == new.virtual_key_id
        ]
        own.sort(key=lambda c: (c.streams > 0 or bool(c.tasks), c.last_seen))
        for conn in own[: max(0, len(own) - CONNECTIONS_PER_PRINCIPAL + 1)]:
            del self.connections[conn.id]  # unknown from now on, closed in the background
            log.warning("acp_http_connection_evicted", extra={"route_id": conn.route_id})
            task = asyncio.create_task(self._finish(conn, "quota"))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections.values()):
            if conn.streams == 0 and not conn.tasks and now - conn.last_seen > IDLE_CLOSE_S:
                task = asyncio.create_task(self._drop(conn, "idle"))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
