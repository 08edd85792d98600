"""The sessions of ``<route>/acp`` (:mod:`agw.acp.http_transport`): a client connection, its
sessions each bound to a pooled agent instance, the buffers their SSE streams read
(:class:`Outbox`), and the JSON-RPC requests relayed to the agent (:class:`SessionRelay`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agw.acp.connection import AcpError, AgentRpcError
from agw.acp.events import map_update, update_of
from agw.acp.limits import settle_prompt
from agw.acp.permissions import PermissionRegistry, auto_approve, cancelled
from agw.acp.pool import Instance, TurnRequest, owner_key, principal_of
from agw.acp.record import (
    INTERNAL,
    INVALID,
    METHOD_NOT_RELAYED,
    PERMISSION_NOT_FOUND,
    Op,
    error_type_of,
)
from agw.acp.runtime import AcpRuntime
from agw.config.acp import AcpService
from agw.request import Request
from agw.sse import frame
from agw.types import JsonObj

log = logging.getLogger(__name__)

BUFFER_LIMIT = 4096  # messages waiting for a stream's GET; beyond, the oldest are dropped...
BUFFER_BYTES = 16 * 1024 * 1024  # ...and beyond this many bytes of them
REQUEST_TIMEOUT_S = 30.0  # set_mode / set_config_option to the agent
CWD_MAX_CHARS = 4096  # a session/new cwd (PATH_MAX), echoed in errors
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

Record = Callable[[Request, Op], None]


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
        event = frame(json.dumps(msg, separators=(",", ":"), ensure_ascii=False))
        self._queue.put_nowait(event)
        self._bytes += len(event)
        while self._queue.qsize() > 1 and (
            self._queue.qsize() > BUFFER_LIMIT or self._bytes > BUFFER_BYTES
        ):
            old = self._queue.get_nowait()
            self._bytes -= len(old or b"")
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("acp_http_buffer_full", extra={"dropped": self.dropped})

    async def get(self) -> bytes | None:
        event = await self._queue.get()
        self._bytes -= len(event or b"")
        return event

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
    caller: str | None  # whose: the caller's virtual key id, or its JWT's (Principal.owner)
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
        return principal_of(self.caller)

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


def rpc_error(msg_id: Any, code: int, message: str) -> JsonObj:
    return {"jsonrpc": "2.0", "id": msg_id, "error": {"code": code, "message": message}}


def rpc_result(msg_id: Any, result: Any) -> JsonObj:
    return {"jsonrpc": "2.0", "id": msg_id, "result": result}


def error_of(exc: AcpError) -> tuple[int, str]:
    if isinstance(exc, AgentRpcError):
        return exc.code, exc.rpc_message
    return (INVALID_PARAMS if exc.status < 500 else INTERNAL_ERROR), exc.message


class SessionRelay:
    """The JSON-RPC requests of a connection that go to its agents: ``session/new``,
    ``session/prompt`` (one ``turn`` row each), ``session/set_mode`` and
    ``session/set_config_option``, ``session/close``, and the client's answers to relayed
    permission requests; each answered on the right stream (docs/acp.md#acp-over-http-routeacp)."""

    def __init__(
        self, runtime: AcpRuntime, permissions: PermissionRegistry, record: Record
    ) -> None:
        self.runtime = runtime
        self.permissions = permissions
        self.record = record

    async def request(
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
                out.push(rpc_result(msg_id, await self._new_session(conn, service, params)))
            elif method == "session/prompt" and session is not None:
                await self._prompt(req, conn, session, service, msg_id, params)
            elif method in ("session/set_mode", "session/set_config_option") and session:
                instance = session.instance
                result = await instance.connection.request(
                    method, {**params, "sessionId": session.session_id}, timeout=REQUEST_TIMEOUT_S
                )
                if isinstance(result, dict):
                    instance.set_config_options(result.get("configOptions"))
                out.push(rpc_result(msg_id, result))
            elif method == "session/close" and session is not None:
                await self.close_session(conn, service.id, session)
                out.push(rpc_result(msg_id, {}))
                out.close()
            elif method == "authenticate":
                out.push(rpc_result(msg_id, {}))
            else:
                op.fail(METHOD_NOT_RELAYED)
                out.push(
                    rpc_error(msg_id, METHOD_NOT_FOUND, f"{method} is not relayed by the gateway")
                )
        except AcpError as exc:
            op.fail(error_type_of(exc))
            out.push(rpc_error(msg_id, *error_of(exc)))
        except Exception:
            log.exception("acp_http_request_failed", extra={"method": method})
            op.fail(INTERNAL)
            out.push(rpc_error(msg_id, INTERNAL_ERROR, "internal gateway error"))
        finally:
            if not (method == "session/prompt" and session is not None):
                op.skip = False
                self.record(req, op)

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
                    self.permissions.cancel_owned(session)
            stop = result.get("stopReason") if isinstance(result, dict) else None
            if isinstance(result, dict) and isinstance(result.get("usage"), dict):
                session.last_usage = result["usage"]
            op.result_status = "cancelled" if stop == "cancelled" else "success"
            op.stop_reason = stop if isinstance(stop, str) else None
            session.outbox.push(rpc_result(msg_id, result))
        except AcpError as exc:
            op.fail(error_type_of(exc))
            session.outbox.push(rpc_error(msg_id, *error_of(exc)))
        except asyncio.CancelledError:  # the connection was closed under it
            op.cancelled()
            raise
        finally:
            op.event_counts, op.usage = session.counts, session.last_usage
            session.counts = None
            settle_prompt(req)  # before the row: it says what a limit did
            self.record(req, op)

    def _permission_handler(
        self, conn: HttpConnection, session: HttpSession, service: AcpService
    ) -> Callable[[JsonObj], Any]:
        registry = self.permissions

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

    def client_response(self, conn: HttpConnection, msg: JsonObj, op: Op) -> None:
        """The client's answer to a relayed ``session/request_permission``."""
        request_id = msg.get("id")
        if not isinstance(request_id, str):
            op.fail(INVALID)
            return
        op.permission_request_id = request_id
        result = msg.get("result")
        outcome = result.get("outcome") if isinstance(result, dict) else None
        chosen = outcome.get("outcome") if isinstance(outcome, dict) else None
        option = outcome.get("optionId") if isinstance(outcome, dict) else None
        registry = self.permissions
        entry = registry.get(request_id)
        if entry is None or entry.service_id != conn.service_id or entry.principal != conn.owner:
            op.fail(PERMISSION_NOT_FOUND)
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
            op.fail(PERMISSION_NOT_FOUND)
        else:
            op.result_status = "success"

    async def close_session(
        self, conn: HttpConnection, service_id: str, session: HttpSession
    ) -> None:
        if session.unsubscribe is not None:
            session.unsubscribe()
        conn.sessions.pop(session.session_id, None)
        self.permissions.cancel_owned(session)
        await self.runtime.close_thread(service_id, session.thread_id)
