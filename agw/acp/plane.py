"""The ACP plane: what an ACP route serves under its path prefix, and one usage row per request.

| path | method | answer |
|---|---|---|
| ``/turn`` | POST | a turn on a pooled agent, as SSE (:mod:`agw.acp.events`) |
| ``/permission`` | POST | the decision of a pending interactive permission request |
| ``/sessions`` | GET | the agent's sessions (``?cwd=&cursor=``), from a transient process |
| ``/sessions/{id}/transcript`` | GET | a session's messages (``?cwd=``), from a transient process |

Anything else under the prefix: 404; a known path with another method: 405 ``{"error":"method
not allowed"}``; a POST without ``Content-Type: application/json``: 415; bodies over 4 MiB:
413; the dispatcher's rejections: ``{"error": msg}`` with their status. Every JSON error is
``{"error": "<message>"}``.

A turn: pre-stream checks (400 ``decode request: ...``, ``thread_id is required``, ``input is
required``), then always 200 SSE: ``session`` -> the instance's cached metadata (``config_options``,
``available_commands``, ``session_info``, ``mode``, ``usage``) -> the request's
``config_overrides`` applied -> ``session/prompt`` while the agent's updates stream -> the tail
drained (250 ms quiet, 2 s cap) -> ``done {stop_reason}``. Any failure: ``error {message}`` ends
the stream. A client that goes away: ``session/cancel`` to the agent, whose prompt must then end
within :data:`CANCEL_GRACE_S` (else the process is killed), and the row records 499 / cancelled.
The turn's events wait in a bounded :class:`UpdateQueue` (backpressure on the agent when the
client does not keep up); a client that takes nothing for :data:`SEND_STALL_S` is gone.

Sessions, threads and permission requests belong to the route and principal of the request
that opened them (:func:`owner_of`): another caller's ``session_id`` or permission request id
gets the answer of an unknown one (docs/acp.md#who-a-session-belongs-to).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote

from agw.acp.connection import AcpConnection, AcpError, AgentExited
from agw.acp.events import Event, UpdateQueue, sse_frame
from agw.acp.history import list_sessions, load_transcript
from agw.acp.permissions import (
    PermissionRegistry,
    auto_approve,
    cancelled,
    timeout_from_env,
)
from agw.acp.runtime import (
    METADATA_KINDS,
    AcpRuntime,
    Instance,
    TurnRequest,
    owner_key,
    principal_of,
)
from agw.clock import now_ms
from agw.config.acp import AcpService
from agw.errors import InvalidRequest, PayloadTooLarge, Refusal
from agw.jsonfast import loads
from agw.request import ClientGone, Request
from agw.types import Headers, JsonObj
from agw.usage.events import AcpUsageEvent
from agw.usage.recorder import UsageRecorder

log = logging.getLogger(__name__)


BODY_LIMIT = 4 * 1024 * 1024
CANCEL_GRACE_S = 5.0  # after session/cancel, the prompt must end within this, else kill
SEND_STALL_S = 60.0  # a client that takes no bytes of a turn's stream for this long is gone
NOT_JSON = "Content-Type must be application/json"
MAX_ID = 1024  # characters of a client's thread_id, session_id or permission request_id
NOT_FOUND_PERMISSION = "permission request not found (already answered or expired)"

# error_type values of the acp_usage_events rows written here (besides the dispatcher's)
INVALID = "protocol_validation_failed"  # 400 / 404 / 405 / 413 of the HTTP surface
CLIENT_ERROR = "invalid_request"  # service disabled, cwd outside allowed_roots, no session id
SERVICE_NOT_FOUND = "service_not_found"
PERMISSION_NOT_FOUND = "permission_not_found"
SESSION_NOT_FOUND = "session_not_found"  # a session id the caller did not open (or unknown)
UPSTREAM = "upstream_failed"  # the agent or its process failed (spawn, handshake, RPC error)
AGENT_EXITED = "agent_exited"  # the process died during the turn
SCOPE_BUSY = "scope_busy"
CAPACITY = "capacity_exceeded"
CANCELLED = "client_cancelled"
INTERNAL = "internal_error"


class HttpError(Exception):
    """An answer refused before any streaming: its status, message and usage error type."""

    def __init__(self, status: int, message: str, error_type: str = INVALID) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type


def error_type_of(exc: AcpError) -> str:
    if isinstance(exc, AgentExited):
        return AGENT_EXITED
    if exc.message.startswith("acp turn is already active"):
        return SCOPE_BUSY
    if exc.message.startswith("acp instance capacity exceeded"):
        return CAPACITY
    if exc.status == 404 and exc.message.startswith("acp session "):
        return SESSION_NOT_FOUND
    return CLIENT_ERROR if exc.status < 500 else UPSTREAM


@dataclass(slots=True)
class Op:
    """What the usage row of one request says."""

    operation: str | None
    started_ms: int = field(default_factory=now_ms)
    status: int = 0
    error_type: str | None = None
    result_status: str | None = None
    service_id: str | None = None
    agent_type: str | None = None
    thread_id: str | None = None
    session_id: str | None = None
    permission_request_id: str | None = None
    fresh_session: bool | None = None
    event_counts: dict[str, int] | None = None
    usage: JsonObj | None = None
    stop_reason: str | None = None  # a turn's, for the metrics (not a column)
    skip: bool = False  # written elsewhere (a prompt over the HTTP transport: its turn row)

    def fail(self, error_type: str) -> None:
        self.error_type = self.error_type or error_type
        self.result_status = self.result_status or "error"


def operation_of(path: str) -> str | None:
    if path == "/turn":
        return "turn"
    if path == "/permission":
        return "permission"
    if path == "/sessions":
        return "sessions"
    if path.startswith("/sessions/") and path.endswith("/transcript"):
        return "transcript"
    if path == "/acp":
        return "acp"  # the HTTP transport names the operation of each request
    return None


def transcript_session_id(req: Request) -> str | None:
    """The ``{session_id}`` of ``/sessions/{session_id}/transcript``: one raw path segment,
    URL-unescaped (so an id may hold an escaped ``/``); None when the path is not that."""
    path = req.path
    if not (path.startswith("/sessions/") and path.endswith("/transcript")):
        return None
    raw = req.scope.get("raw_path")
    if isinstance(raw, bytes | bytearray) and raw:
        segments = bytes(raw).split(b"?", 1)[0].decode("latin-1").split("/")
        if len(segments) >= 3 and segments[-1] == "transcript" and segments[-3] == "sessions":
            return unquote(segments[-2])
        return None
    middle = path[len("/sessions/") : -len("/transcript")]
    return None if "/" in middle else middle


def require_json(req: Request) -> None:
    """415 unless the request says ``Content-Type: application/json``: a browser cannot send
    that cross-site without a CORS preflight (a ``text/plain`` form post can)."""
    media = req.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise HttpError(415, NOT_JSON)


def owner_of(req: Request) -> str:
    """The owner of what a request opens: its route and principal (:func:`principal_of`)."""
    return owner_key(req.route.id, principal_of(req.virtual_key_id))


def _check_id(key: str, value: str) -> None:
    """An id a client sends: bounded, and without NUL (the scope's separator)."""
    if len(value) > MAX_ID or "\x00" in value:
        raise HttpError(400, f"decode request: {key} must be at most {MAX_ID} characters, no NUL")


def _string(obj: JsonObj, key: str) -> str:
    value = obj.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise HttpError(400, f"decode request: {key} must be a string")
    return value


def parse_turn(body: bytes, op: Op | None = None) -> TurnRequest:
    """The request of a turn; ``op`` gets its thread, session and ``fresh_session`` as soon as
    they are read (a refused request's row still says which thread it was for)."""
    try:
        obj = loads(body)
    except (ValueError, RecursionError) as exc:
        raise HttpError(400, f"decode request: {exc}") from None
    if not isinstance(obj, dict):
        raise HttpError(400, "decode request: the body must be a JSON object")
    if op is not None:
        for key in ("thread_id", "session_id"):
            if isinstance(obj.get(key), str) and obj[key]:
                setattr(op, key, obj[key][:MAX_ID])
        if isinstance(obj.get("fresh_session"), bool):
            op.fresh_session = obj["fresh_session"]
    fields = {k: _string(obj, k) for k in ("thread_id", "input", "session_id", "cwd", "model")}
    for key in ("thread_id", "session_id"):
        _check_id(key, fields[key])
    fresh = obj.get("fresh_session", False)
    if fresh is None:
        fresh = False
    if not isinstance(fresh, bool):
        raise HttpError(400, "decode request: fresh_session must be a boolean")
    overrides = obj.get("config_overrides") or {}
    if not isinstance(overrides, dict) or not all(isinstance(v, str) for v in overrides.values()):
        raise HttpError(400, "decode request: config_overrides must be an object of strings")
    if not fields["thread_id"].strip():
        raise HttpError(400, "thread_id is required")
    if not fields["input"].strip():
        raise HttpError(400, "input is required")
    return TurnRequest(
        thread_id=fields["thread_id"],
        input=fields["input"],
        session_id=fields["session_id"],
        cwd=fields["cwd"],
        model=fields["model"],
        fresh_session=fresh,
        config_overrides=dict(overrides),
    )


def _sse_headers(req: Request) -> Headers:
    headers: Headers = [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-cache"),
        (b"x-accel-buffering", b"no"),
    ]
    if req.scope.get("http_version") in ("1.0", "1.1"):  # a connection header is an h2 error
        headers.append((b"connection", b"keep-alive"))
    return headers


def _query(req: Request) -> dict[str, str]:
    return {k: v[-1] for k, v in parse_qs(req.query, keep_blank_values=True).items()}


async def json_reply(
    req: Request, status: int, body: JsonObj, headers: Headers | None = None
) -> None:
    await req.respond(status, json.dumps(body).encode(), headers=headers)


class _Turn:
    """One streaming turn: the SSE writer, the agent's updates and the client's presence."""

    def __init__(self, plane: AcpPlane, req: Request, op: Op, service: AcpService) -> None:
        self.plane = plane
        self.req = req
        self.op = op
        self.service = service
        self.gone = False
        self.counts: dict[str, int] = {}
        self.last_usage: JsonObj | None = None
        self.queue: UpdateQueue | None = None
        self.instance: Instance | None = None
        self.stalled = False  # the client stopped reading (SEND_STALL_S)

    async def emit(self, event: Event, frame: bytes | None = None) -> None:
        if self.gone:
            return
        try:
            async with asyncio.timeout(SEND_STALL_S):
                await self.req.body(event.frame() if frame is None else frame, more=True)
        except TimeoutError:  # the client stopped reading: it is treated as gone
            log.warning("acp_client_stalled", extra={"service_id": self.service.id})
            self.stalled = True
            self._lost()
            return
        except Exception:  # the client is gone; the watcher says so too
            self._lost()
            return
        self.counts[event.name] = self.counts.get(event.name, 0) + 1

    async def forward(self, event: Event, frame: bytes | None = None) -> None:
        """An event of the agent's (not a replay): the last usage update is kept for the row."""
        if event.name == "usage" and isinstance(event.payload.get("data"), dict):
            self.last_usage = event.payload["data"]
        await self.emit(event, frame)

    def _lost(self) -> None:
        if not self.gone:
            self.gone = True
            if self.queue is not None:  # nobody reads: the agent must not wait on the queue
                self.queue.close()
            self.plane.permissions.cancel_owned(self)

    async def fail(self, message: str, error_type: str) -> None:
        self.op.fail(error_type)
        await self.emit(Event("error", {"message": message}))

    async def permission(self, params: JsonObj) -> JsonObj:
        """The connection's permission handler while this turn runs."""
        mode = self.service.permission_mode
        if mode == "auto_approve":
            return auto_approve(params)
        if mode != "interactive" or self.gone or self.queue is None or self.instance is None:
            return cancelled()
        registry = self.plane.permissions
        entry = registry.open(
            self.service.id,
            self.instance.session_id,
            params,
            owner=self,
            principal=owner_of(self.req),
        )
        self.queue.put(
            Event(
                "permission",
                {
                    "request_id": entry.request_id,
                    "session_id": self.instance.session_id,
                    "data": params,
                },
            )
        )
        return await registry.wait(entry)

    async def run(self, turn: TurnRequest) -> None:
        watcher = asyncio.create_task(self.req.watch_disconnect())
        try:
            await self._run(turn, watcher)
        except Exception:
            log.exception("acp_turn_failed", extra={"service_id": self.service.id})
            await self.fail("internal gateway error", INTERNAL)
        finally:
            watcher.cancel()
            await asyncio.wait({watcher})
            if not watcher.cancelled():
                watcher.exception()  # a receive that failed means the client is gone: known
            self.plane.permissions.cancel_owned(self)
        self.op.event_counts = dict(self.counts)
        self.op.usage = self.last_usage
        if self.gone:
            self.op.status = 499
            self.op.error_type = CANCELLED
            self.op.result_status = "cancelled"

    async def _run(self, turn: TurnRequest, watcher: asyncio.Task[None]) -> None:
        runtime = self.plane.runtime
        service = self.service
        if service.disabled:
            await self.fail(f'acp service "{service.id}" is disabled', CLIENT_ERROR)
            return
        try:
            runtime.resolve_cwd(service, turn.cwd)
        except AcpError as exc:
            await self.fail(exc.message, error_type_of(exc))
            return
        try:
            lease = await runtime.acquire(service, turn)
        except AcpError as exc:
            await self.fail(exc.message, error_type_of(exc))
            return
        async with lease:
            instance = lease.instance
            self.instance = instance
            self.op.session_id = instance.session_id or None
            if watcher.done():
                self._lost()
                return
            await self.emit(Event("session", {"session_id": instance.session_id}))
            for kind in METADATA_KINDS:
                value = instance.metadata.get(kind)
                if value:
                    await self.emit(Event(kind, {"data": value}))
            conn = instance.connection
            self.queue = UpdateQueue(instance.session_id)
            unsubscribe = conn.subscribe(self.queue.on_update)
            conn.permission_handler = self.permission
            try:
                await self._prompt(instance, conn, turn, watcher)
            finally:
                conn.permission_handler = None
                self.queue.close()
                unsubscribe()

    async def _prompt(
        self,
        instance: Instance,
        conn: AcpConnection,
        turn: TurnRequest,
        watcher: asyncio.Task[None],
    ) -> None:
        assert self.queue is not None
        queue = self.queue
        if turn.config_overrides:
            try:
                await self.plane.runtime.apply_overrides(instance, turn.config_overrides)
            except AcpError as exc:
                await self._flush()
                await self.fail(exc.message, error_type_of(exc))
                return
        prompt = asyncio.create_task(
            conn.request(
                "session/prompt",
                {
                    "sessionId": instance.session_id,
                    "prompt": [{"type": "text", "text": turn.input}],
                },
            )
        )
        getter: asyncio.Task[tuple[Event, bytes]] | None = None
        try:
            while True:
                await self._flush()
                if getter is None:
                    getter = asyncio.create_task(queue.get())
                waiting: set[asyncio.Future[Any]] = {getter, prompt}
                if not self.gone:
                    waiting.add(watcher)
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    await self.forward(*getter.result())
                    getter = None
                if prompt in done:
                    break
                if watcher in done and not self.gone:
                    self._lost()
                    await self._cancel(instance, conn, prompt)
                    break
        finally:
            if getter is not None:
                getter.cancel()
            if not prompt.done():  # the request's task itself was cancelled (shutdown)
                prompt.cancel()
        if self.gone:
            return
        await self._flush()
        try:
            result = prompt.result()
        except AcpError as exc:
            await self.fail(exc.message, error_type_of(exc))
            return
        await queue.drain(self.forward)
        stop = "end_turn"
        if isinstance(result, dict):
            if isinstance(result.get("stopReason"), str) and result["stopReason"]:
                stop = result["stopReason"]
            if isinstance(result.get("usage"), dict):
                self.last_usage = result["usage"]
        self.op.result_status = "cancelled" if stop == "cancelled" else "success"
        self.op.stop_reason = stop
        await self.emit(Event("done", {"stop_reason": stop}))

    async def _flush(self) -> None:
        assert self.queue is not None
        while not self.gone and (item := self.queue.get_nowait()) is not None:
            await self.forward(*item)

    async def _cancel(
        self, instance: Instance, conn: AcpConnection, prompt: asyncio.Task[Any]
    ) -> None:
        """The client left mid-turn: ``session/cancel``; an agent that does not end its prompt
        within the grace period is killed (its instance is then dropped by the lease)."""
        try:
            await conn.notify("session/cancel", {"sessionId": instance.session_id})
        except AcpError as exc:
            log.info("acp_cancel_failed", extra={"error": exc.message})
        await asyncio.wait({prompt}, timeout=CANCEL_GRACE_S)
        if not prompt.done():
            log.warning(
                "acp_cancel_ignored",
                extra={"service_id": self.service.id, "session_id": instance.session_id},
            )
            prompt.cancel()
            await conn.close()
            await asyncio.wait({prompt})
        if not prompt.cancelled():
            prompt.exception()  # retrieved: a failure after the client left is not reported


class AcpPlane:
    """The data plane's handler of ``acp`` routes. ``permissions`` is shared with the admin API.

    ``permission_timeout_s``: how long an interactive permission request waits for its answer;
    default ``AGW_ACP_PERMISSION_TIMEOUT_S`` from the environment, else 60."""

    edge_always = True  # a browser may hold an ACP session

    def __init__(
        self,
        recorder: UsageRecorder | None,
        runtime: AcpRuntime,
        *,
        permission_timeout_s: float | None = None,
    ) -> None:
        self.recorder = recorder
        self.runtime = runtime
        self.permissions = PermissionRegistry(
            timeout_from_env() if permission_timeout_s is None else permission_timeout_s
        )
        self._routes: dict[str, Callable[[Request, Op], Awaitable[None]]] = {
            "turn": self._turn,
            "permission": self._permission,
            "sessions": self._sessions,
            "transcript": self._transcript,
            "acp": self._http,
        }
        from agw.acp.http_transport import HttpTransport  # it builds on this module

        self.http = HttpTransport(self)

    def drain(self) -> None:
        """The server is stopping: end the streams that never end by themselves."""
        self.http.drain()

    async def close(self) -> None:
        await self.http.close()
        self.permissions.close()
        await self.runtime.close()

    # ------------------------------------------------------------------------------ entry

    async def handle(self, req: Request, rejection: Refusal | None) -> None:
        op = Op(operation_of(req.path))
        try:
            if rejection is not None:
                raise HttpError(rejection.status, rejection.message, rejection.code)
            handler = self._routes.get(op.operation or "")
            if handler is None:
                raise HttpError(404, f"not found: {req.path}")
            await handler(req, op)
        except HttpError as exc:
            op.fail(exc.error_type)
            op.status = exc.status
            if not req.started:
                await json_reply(req, exc.status, {"error": exc.message}, req.close_if_unread())
        except PayloadTooLarge as exc:
            op.fail(INVALID)
            op.status = 413
            if not req.started:
                await json_reply(req, 413, {"error": exc.message}, req.close_if_unread())
        except ClientGone:
            op.status, op.error_type, op.result_status = 499, CANCELLED, "cancelled"
        except Exception:
            log.exception("acp_request_failed", extra={"route_id": req.route.id})
            op.fail(INTERNAL)
            op.status = 500
            if not req.started:
                await json_reply(req, 500, {"error": "internal gateway error"})
        if req.started and op.status == 0:
            op.status = req.status
        self.record(req, op)

    def _method(self, req: Request, method: str) -> None:
        if req.method != method:
            raise HttpError(405, "method not allowed")

    def _service(self, req: Request, op: Op) -> AcpService:
        service_id: str = req.route.config.service_id
        op.service_id = service_id
        service: AcpService | None = req.snapshot.acp_services.get(service_id)
        if service is None:
            raise HttpError(404, f'acp service "{service_id}" not found', SERVICE_NOT_FOUND)
        op.agent_type = service.agent_type
        return service

    async def _http(self, req: Request, op: Op) -> None:
        """``<route>/acp``: the draft ACP Streamable HTTP transport (agw/acp/http_transport.py)."""
        op.operation = None
        await self.http.handle(req, op, self._service(req, op))

    # ----------------------------------------------------------------------------- /turn

    async def _turn(self, req: Request, op: Op) -> None:
        self._method(req, "POST")
        require_json(req)
        body = await req.read_body(BODY_LIMIT)
        turn = parse_turn(body, op)
        turn.route_id = req.route.id
        turn.principal = principal_of(req.virtual_key_id)
        op.fresh_session = turn.fresh_session
        service_id: str = req.route.config.service_id
        op.service_id = service_id
        service: AcpService | None = req.snapshot.acp_services.get(service_id)
        await req.start(200, _sse_headers(req))
        op.status = 200
        if service is None:
            await req.body(
                sse_frame("error", {"message": f'acp service "{service_id}" not found'}), True
            )
            op.fail(SERVICE_NOT_FOUND)
            op.event_counts = {"error": 1}
        else:
            op.agent_type = service.agent_type
            runner = _Turn(self, req, op, service)
            await runner.run(turn)
            if runner.stalled:
                return  # the stream is left unfinished: the server drops the connection
        with contextlib.suppress(Exception):
            async with asyncio.timeout(SEND_STALL_S):
                await req.body(b"", False)

    # ----------------------------------------------------------------------- /permission

    async def _permission(self, req: Request, op: Op) -> None:
        self._method(req, "POST")
        require_json(req)
        body = await req.read_body(BODY_LIMIT)
        try:
            obj = loads(body)
        except (ValueError, RecursionError) as exc:
            raise HttpError(400, f"decode request: {exc}") from None
        if not isinstance(obj, dict):
            raise HttpError(400, "decode request: the body must be a JSON object")
        fields = {k: _string(obj, k) for k in ("request_id", "outcome", "option_id")}
        request_id = fields["request_id"].strip()
        op.permission_request_id = request_id[:MAX_ID] or None
        _check_id("request_id", request_id)
        service_id: str = req.route.config.service_id
        op.service_id = service_id
        service = req.snapshot.acp_services.get(service_id)
        op.agent_type = service.agent_type if service is not None else None
        if not request_id:
            raise HttpError(400, "request_id is required")
        owner = owner_of(req)
        entry = self.permissions.get(request_id)
        if entry is not None and entry.service_id == service_id and entry.principal == owner:
            op.session_id = entry.session_id or None
        try:
            ok = self.permissions.resolve(
                request_id,
                fields["outcome"],
                fields["option_id"] or None,
                service_id=service_id,
                principal=owner,
            )
        except InvalidRequest as exc:
            raise HttpError(400, exc.message) from None
        if not ok:
            raise HttpError(404, NOT_FOUND_PERMISSION, PERMISSION_NOT_FOUND)
        op.result_status = "success"
        op.status = 200
        await json_reply(req, 200, {"status": "resolved"})

    # ------------------------------------------------------------------------- /sessions

    def _transient_service(self, req: Request, op: Op) -> tuple[AcpService, str]:
        service = self._service(req, op)
        if service.disabled:
            raise HttpError(400, f'acp service "{service.id}" is disabled', CLIENT_ERROR)
        try:
            cwd = self.runtime.resolve_cwd(service, _query(req).get("cwd", ""))
        except AcpError as exc:
            raise HttpError(exc.status, exc.message, error_type_of(exc)) from None
        return service, cwd

    async def _sessions(self, req: Request, op: Op) -> None:
        self._method(req, "GET")
        service, cwd = self._transient_service(req, op)
        try:
            out = await list_sessions(self.runtime, service, cwd, _query(req).get("cursor", ""))
        except AcpError as exc:
            raise HttpError(exc.status, exc.message, error_type_of(exc)) from None
        owner = owner_of(req)  # only the sessions this caller opened on this route
        out["sessions"] = [s for s in out["sessions"] if self.runtime.owns(owner, s["session_id"])]
        op.result_status = "success"
        op.status = 200
        await json_reply(req, 200, out)

    async def _transcript(self, req: Request, op: Op) -> None:
        session_id = transcript_session_id(req)
        if session_id is None:
            op.operation = None
            raise HttpError(404, f"not found: {req.path}")
        self._method(req, "GET")
        op.session_id = session_id[:MAX_ID] or None
        if not session_id.strip():
            self._service(req, op)
            raise HttpError(400, "session id is required", CLIENT_ERROR)
        service, cwd = self._transient_service(req, op)
        try:
            self.runtime.check_owner(owner_of(req), session_id)
            out = await load_transcript(self.runtime, service, session_id, cwd)
        except AcpError as exc:
            raise HttpError(exc.status, exc.message, error_type_of(exc)) from None
        op.result_status = "success"
        op.status = 200
        await json_reply(req, 200, out)

    # ----------------------------------------------------------------------------- usage

    def record(self, req: Request, op: Op) -> None:
        if self.recorder is None or op.skip:
            return
        status = op.status or req.status or 500
        if op.result_status is None:
            op.result_status = "error" if op.error_type else "success"
        self.recorder.emit(
            AcpUsageEvent(
                trace_id=req.trace.trace_id,
                span_id=req.trace.span_id,
                parent_span_id=req.trace.parent_span_id,
                agent_depth=req.trace.depth,
                started_at=op.started_ms,
                finished_at=now_ms(),
                route_id=req.route.id,
                route_protocol=req.route.protocol,
                virtual_key_id=req.virtual_key_id,
                success=status < 400 and op.error_type is None,
                status_code=status,
                error_type=op.error_type,
                service_id=op.service_id,
                agent_type=op.agent_type,
                operation=op.operation,
                thread_id=op.thread_id,
                session_id=op.session_id,
                permission_request_id=op.permission_request_id,
                fresh_session=op.fresh_session,
                event_counts_json=op.event_counts,
                usage_json=op.usage,
                result_status=op.result_status,
                agent_id=req.route.agent_id,
                http_method=req.method,
                http_path=req.scope["path"],
                stop_reason=op.stop_reason,
            )
        )
