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
slowly: :class:`~agw.acp.http_sessions.Outbox`, bounded); one GET per stream at a time (a
second: 409).

What the gateway does with each message:

- ``initialize``: the agent's ``initialize`` result (taken once per service configuration from a
  transient process), with what the gateway relays: ``loadSession`` false, no
  ``sessionCapabilities``, ``mcpCapabilities`` http/sse false (the client's ``mcpServers`` are
  not passed on: with ``gateway_origin`` the gateway gives its own), ``authMethods`` empty (the
  virtual key is the authentication). The connection belongs to the route and the virtual key
  that opened it: any other gets 404 for its id; its sessions are scoped to, and owned by, that
  route and principal (:meth:`~agw.acp.http_sessions.HttpConnection.turn`), as a ``/turn``'s are.
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
import logging
import secrets
import time

from agw.acp.authorization import check
from agw.acp.connection import AcpError
from agw.acp.http_sessions import (
    HttpConnection,
    Outbox,
    Record,
    SessionRelay,
    error_of,
    rpc_error,
    rpc_result,
)
from agw.acp.limits import PROMPT, admit_prompt, settle_prompt
from agw.acp.ops import BODY_LIMIT, SSE_HEADERS, json_reply, refuse, require_json
from agw.acp.permissions import PermissionRegistry
from agw.acp.pool import signature
from agw.acp.record import Op, error_type_of
from agw.acp.replica import Replica
from agw.acp.runtime import AcpRuntime
from agw.config.acp import AcpService
from agw.jsonfast import loads
from agw.policy.limits import Limiter
from agw.request import Request
from agw.rpcids import ID_MAX_CHARS, METHOD_MAX_CHARS, valid_id
from agw.types import JsonObj

log = logging.getLogger(__name__)


CONNECTION_HEADER = "acp-connection-id"
SESSION_HEADER = "acp-session-id"
KEEPALIVE_S = 15.0
KEEPALIVE = b": keepalive\n\n"  # an SSE comment, not an event
IDLE_CLOSE_S = 1800.0
SWEEP_EVERY_S = 60.0
# Connections one principal may hold on one route: each has a buffer of up to BUFFER_BYTES, so
# without a bound a client could make the gateway hold any multiple of it. A new connection
# beyond the quota closes the principal's own least recently used one (never another's).
CONNECTIONS_PER_PRINCIPAL = 32
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


class HttpTransport:
    """``<route>/acp`` of every ACP route (see the module docstring)."""

    def __init__(
        self,
        runtime: AcpRuntime,
        permissions: PermissionRegistry,
        record: Record,
        limiter: Limiter | None = None,
        replica: Replica | None = None,
    ) -> None:
        self.runtime = runtime
        self.replica = replica or Replica("agw", tagged=False)  # tags connection ids
        self.relay = SessionRelay(runtime, permissions, record)
        self.limiter = limiter or Limiter()  # prompts are admitted against it (agw.acp.limits)
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
            check(req, op, "")  # the deny rules (agw/acp/authorization.py)
            await self._get(req, op)
        elif req.method == "DELETE":
            op.operation = "close"
            check(req, op, "")
            conn = self._connection(req)
            await self._drop(conn, "deleted")
            op.status = 202
            await req.respond(202, b"")
        else:
            raise refuse(405, "method not allowed")

    def _connection(self, req: Request) -> HttpConnection:
        cid = req.headers.get(CONNECTION_HEADER, "").strip()
        if not cid:
            raise refuse(400, "Missing connection id")
        self.replica.local(cid, "acp connection")  # 421 when another replica holds it
        conn = self.connections.get(cid)
        if conn is None or conn.route_id != req.route.id or conn.caller != req.owner_id:
            raise refuse(404, "Unknown connection id")
        conn.last_seen = time.monotonic()
        return conn

    async def _post(self, req: Request, op: Op, service: AcpService) -> None:
        require_json(req)
        body = await req.read_body(BODY_LIMIT)
        try:
            msg = loads(body)
        except (ValueError, RecursionError) as exc:
            raise refuse(400, f"decode request: {exc}") from None
        if isinstance(msg, list):
            raise refuse(501, "Batch requests are not supported")
        if not isinstance(msg, dict):
            raise refuse(400, "Invalid JSON-RPC message")
        method = msg.get("method")
        # the id and the method are echoed in answers that wait in the connection's buffer:
        # bounded, as the MCP plane bounds them
        if ("id" in msg and not valid_id(msg["id"])) or (
            isinstance(method, str) and len(method) > METHOD_MAX_CHARS
        ):
            raise refuse(
                400,
                f"Invalid JSON-RPC message: the id must be a string of at most {ID_MAX_CHARS} "
                f"characters or an integer, the method at most {METHOD_MAX_CHARS} characters",
            )
        if req.route.rules is not None:  # before any agent starts (agw/acp/authorization.py)
            if isinstance(method, str):
                op.operation = OPERATIONS.get(method, method)
            check(req, op, method if isinstance(method, str) else "session/request_permission")
        if method == "initialize" and "id" in msg:
            op.operation = "initialize"
            await self._initialize(req, op, service, msg)
            return
        conn = self._connection(req)
        if method is None:
            op.operation = "permission"
            self.relay.client_response(conn, msg, op)
            op.status = 202
            await req.respond(202, b"")
            return
        if not isinstance(method, str):
            raise refuse(400, "Invalid JSON-RPC message")
        op.operation = OPERATIONS.get(method, method)
        sid = req.headers.get(SESSION_HEADER, "").strip()
        if method in SESSION_SCOPED and not sid:
            raise refuse(400, "Missing session id header")
        session = conn.sessions.get(sid) if sid else None
        if sid and session is None:
            raise refuse(404, "Unknown session id")
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
        if method == PROMPT and session is not None:  # a 429 refuses it here, before the 202
            await admit_prompt(self.limiter, req, session.session_id)
        # The row is written when the answer is known (202 only says it was accepted); a
        # prompt's row is its turn's, written when the turn ends (its hold released then).
        op.skip = True
        task = asyncio.create_task(
            self.relay.request(req, conn, session, service, msg["id"], method, params, op)
        )
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)
        if req.admission is not None:  # also when the task is cancelled before it starts
            task.add_done_callback(lambda _: settle_prompt(req))
        op.status = 202
        await req.respond(202, b"")

    async def _initialize(self, req: Request, op: Op, service: AcpService, msg: JsonObj) -> None:
        self._sweep()
        try:
            agent = await self._agent_init(service)
        except AcpError as exc:
            op.fail(error_type_of(exc))
            op.status = exc.status
            await json_reply(req, exc.status, rpc_error(msg["id"], *error_of(exc)))
            return
        caps = dict(agent.get("agentCapabilities") or {})
        caps["loadSession"] = False
        caps["sessionCapabilities"] = {}
        caps["mcpCapabilities"] = {"http": False, "sse": False}
        result: JsonObj = {"protocolVersion": 1, "agentCapabilities": caps, "authMethods": []}
        if isinstance(agent.get("agentInfo"), dict):
            result["agentInfo"] = agent["agentInfo"]
        conn = HttpConnection(
            self.replica.tag(secrets.token_hex(16)), req.route.id, service.id, req.owner_id
        )
        self._make_room(conn)
        self.connections[conn.id] = conn
        self._watch_idle()
        op.status = 200
        op.result_status = "success"
        await json_reply(
            req,
            200,
            rpc_result(msg["id"], result),
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

    # ------------------------------------------------------------------------ streams

    async def _get(self, req: Request, op: Op) -> None:
        op.operation = "stream"
        conn = self._connection(req)
        sid = req.headers.get(SESSION_HEADER, "").strip()
        outbox = conn.outbox
        if sid:
            session = conn.sessions.get(sid)
            if session is None:
                raise refuse(404, "Unknown session id")
            outbox = session.outbox
            op.session_id = sid
        if outbox.reading:
            raise refuse(409, "a stream is already open for this id")
        outbox.reading = True
        conn.streams += 1
        watcher = asyncio.create_task(req.watch_disconnect())
        try:
            await req.start(200, SSE_HEADERS)
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
                    await req.body(KEEPALIVE, True)
        finally:
            if getter is not None:
                getter.cancel()

    # ------------------------------------------------------------------------ closing

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
            await self.relay.close_session(conn, conn.service_id, session)
            session.outbox.close()
        conn.outbox.close()
        log.info("acp_http_connection_closed", extra={"reason": reason})

    def _make_room(self, new: HttpConnection) -> None:
        """At the quota, close the least recently used connections of ``new``'s route and
        principal (:data:`CONNECTIONS_PER_PRINCIPAL`)."""
        own = [
            c
            for c in self.connections.values()
            if c.route_id == new.route_id and c.caller == new.caller
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
