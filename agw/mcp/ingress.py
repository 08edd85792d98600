"""What an MCP client sees at an MCP route's path: the HTTP rules of both eras, sessions,
JSON-or-SSE answers, the standalone stream, and the legacy HTTP+SSE transport.

Paths under the route prefix: ``/sse`` (GET, legacy stream) and ``/message...`` (POST, legacy
messages); anything else is the streamable HTTP endpoint (POST, GET, DELETE).

A POST is, in this order: the dispatcher's rejection (its status, a JSON-RPC error, and
``WWW-Authenticate: Bearer`` on 401; the dispatcher's ``Host`` (421) and ``Origin`` (403)
checks, agw.dataplane.EdgeCheck, among them) -> ``Accept`` (neither JSON nor SSE: 406) -> body
(over 4 MiB: 413; not JSON: 400 -32700; not a message: 400 -32600) -> the era:

- ``Mcp-Session-Id`` given: that session (unknown, or bound to another route or key: 404), its
  ``MCP-Protocol-Version`` checked (unsupported: 400 -32600), batches only for 2025-03-26 (and
  2024-11-05) sessions;
- an ``initialize`` request: a new handshake session, its id in the answer's header;
- ``params._meta`` names a protocol version (or the header says 2026-07-28): the stateless
  era, checked as 2026-07-28 asks (``Mcp-Method`` / ``Mcp-Name`` mismatch: 400 -32020;
  unsupported version: 400 -32022; unknown method: 404 -32601);
- otherwise: 400, the session id is required.

Notifications and responses alone: 202. A request is answered with JSON, unless the client
accepts SSE and something (progress, logging, a relayed request) must reach it before the
answer: then the answer becomes an SSE stream (``event: message`` per message). A client that
goes away cancels its calls.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import logging
import re
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

from agw.errors import PayloadTooLarge, Refusal
from agw.mcp import jsonrpc as rpc
from agw.mcp.jsonrpc import RpcError
from agw.mcp.sessions import (
    SSE_HEADERS,
    Call,
    Context,
    DownstreamSession,
    Exchange,
    Handler,
    InFlight,
    SessionRefused,
    Stream,
    sse_event,
)
from agw.request import ClientGone, Request
from agw.runtime.attribution import SESSION_ID_MAX
from agw.types import Headers, JsonObj

if TYPE_CHECKING:
    from agw.mcp.runtime import McpRuntime

log = logging.getLogger(__name__)

BODY_LIMIT = 4 * 1024 * 1024
PING_S = 15.0  # comment line on an idle standalone stream, so a dead client is noticed
HANDSHAKE_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05")
LATEST_HANDSHAKE = "2025-11-25"
BATCH_VERSIONS = frozenset({"2025-03-26", "2024-11-05"})
MODERN_VERSIONS = ("2026-07-28",)
SUPPORTED_VERSIONS = ["2026-07-28", "2025-11-25", "2025-06-18", "2025-03-26"]
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
# Header values read here are bounded before use: a session id longer than the gateway's own
# (32 hex digits) is unknown at once; a longer Mcp-Name cannot match and is not decoded; what
# an error message quotes back is cut.
SESSION_HEADER_MAX = 64
NAME_HEADER_MAX = 8192
QUOTE_MAX = 40
SESSION_LIMIT_CODE = -32000  # no room for another session (HTTP 503)
_B64_SENTINEL = re.compile(r"^=\?base64\?(?P<payload>.*)\?=$")


class HttpFailure(Exception):
    """A message refused at the HTTP level: the status and the JSON-RPC error to answer with."""

    def __init__(
        self,
        status: int,
        error: RpcError,
        *,
        msg_id: Any = None,
        method: str | None = None,
        error_type: str = "protocol_validation_failed",
        headers: Headers | None = None,
    ) -> None:
        super().__init__(error.message)
        self.status = status
        self.error = error
        self.msg_id = msg_id
        self.method = method
        self.error_type = error_type
        self.headers = headers or []


def accepts(header: str | None) -> tuple[bool, bool]:
    """(JSON ok, SSE ok) from an Accept header. JSON: named, a wildcard, or no header at all;
    SSE only when named (so a plain HTTP client never gets a stream it did not ask for)."""
    if header is None or not header.strip():
        return True, False
    json_ok = sse_ok = False
    for part in header.split(","):
        media = part.split(";", 1)[0].strip().lower()
        if media in ("*/*", "application/*", "application/json"):
            json_ok = True
        elif media == "text/event-stream":
            sse_ok = True
    return json_ok, sse_ok


def decode_header(value: str | None) -> str | None:
    """``Mcp-Name``: verbatim, or the ``=?base64?...?=`` sentinel decoded (None if corrupt)."""
    if value is None or len(value) > NAME_HEADER_MAX:
        return None
    m = _B64_SENTINEL.fullmatch(value)
    if m is None:
        return value
    try:
        raw = base64.b64decode(m.group("payload"), validate=True)
        return raw.decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def check_modern(msg: JsonObj, headers: dict[str, str]) -> None:
    """The 2026-07-28 request checks, in the order its SDK applies them."""
    msg_id = msg.get("id")
    params = msg.get("params") or {}
    meta = params.get("_meta")
    if not isinstance(meta, dict) or META_VERSION not in meta or META_CAPABILITIES not in meta:
        raise HttpFailure(
            400,
            RpcError(
                rpc.INVALID_PARAMS,
                f"params._meta must carry {META_VERSION!r} and {META_CAPABILITIES!r}",
            ),
            msg_id=msg_id,
        )
    version = meta[META_VERSION]
    method = msg["method"]
    mismatch = None
    if headers.get("mcp-protocol-version") != version:
        mismatch = "MCP-Protocol-Version header does not match params._meta's protocol version"
    elif headers.get("mcp-method") != method:
        mismatch = "Mcp-Method header does not match the request's method"
    elif (
        (key := NAME_BEARING.get(method)) is not None
        and params.get(key) is not None
        and decode_header(headers.get("mcp-name")) != params[key]
    ):
        mismatch = f"Mcp-Name header does not match the request's params.{key}"
    if mismatch:
        raise HttpFailure(400, RpcError(rpc.HEADER_MISMATCH, mismatch), msg_id=msg_id)
    if version not in MODERN_VERSIONS:
        raise HttpFailure(
            400,
            RpcError(
                rpc.UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
                {"supported": SUPPORTED_VERSIONS, "requested": version},
            ),
            msg_id=msg_id,
        )


def is_modern(msg: JsonObj, headers: dict[str, str]) -> bool:
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if isinstance(meta, dict) and META_VERSION in meta:
        return True
    return headers.get("mcp-protocol-version") in MODERN_VERSIONS


def _error_body(msg_id: Any, error: RpcError) -> bytes:
    return json.dumps(rpc.error(msg_id, error)).encode()


def _peek(raw: bytes) -> tuple[str | None, str | None]:
    """(method, id) of a body, best effort, for the usage row of a refused request."""
    try:
        msg = json.loads(raw)
    except (ValueError, RecursionError):
        return None, None
    if isinstance(msg, list) and msg:
        msg = msg[0]
    if not isinstance(msg, dict):
        return None, None
    method = msg.get("method")
    msg_id = msg.get("id")
    return (
        method if isinstance(method, str) and len(method) <= rpc.METHOD_MAX_CHARS else None,
        str(msg_id) if rpc.valid_id(msg_id) else None,
    )


class Ingress:
    def __init__(self, runtime: McpRuntime, handler: Handler) -> None:
        self.runtime = runtime
        self.handler = handler

    async def handle(self, req: Request, rejection: Refusal | None) -> None:
        call: Call | None = None
        try:
            if rejection is not None:
                call = Call()
                await self._peek_body(req, call)
                headers = [(b"www-authenticate", b"Bearer")] if rejection.status == 401 else []
                raise HttpFailure(
                    rejection.status,
                    RpcError(rpc.INVALID_REQUEST, rejection.message),
                    error_type=rejection.code,
                    headers=headers,
                )
            call = await self._route(req)
        except HttpFailure as exc:
            call = call or Call()
            call.request_id = call.request_id or (
                str(exc.msg_id) if rpc.valid_id(exc.msg_id) else None
            )
            call.method = call.method or exc.method
            call.fail(exc.error, exc.error_type)
            call.status_code = exc.status
            if not req.started:
                await req.respond(
                    exc.status,
                    _error_body(exc.msg_id, exc.error),
                    headers=exc.headers + req.close_if_unread(),
                )
        except ClientGone:
            if call is not None:
                call.status_code, call.error_type = 499, "client_cancelled"
                call.result_status = "cancelled"
        except Exception:
            log.exception("mcp_request_failed", extra={"route_id": req.route.id})
            call = call or Call()
            call.fail(RpcError(rpc.INTERNAL_ERROR, "internal gateway error"), "internal_error")
            call.status_code = 500
            if not req.started:
                await req.respond(
                    500, _error_body(None, RpcError(rpc.INTERNAL_ERROR, "internal gateway error"))
                )
        if call is not None:
            self.handler.record(req, call)

    async def _peek_body(self, req: Request, call: Call) -> None:
        if req.method != "POST":
            return
        with contextlib.suppress(PayloadTooLarge, ClientGone):
            call.method, call.request_id = _peek(await req.read_body(BODY_LIMIT))

    # ----------------------------------------------------------------------------- routing

    async def _route(self, req: Request) -> Call | None:
        """Serve the request; a Call when one usage row is still to be written for it (the
        others were recorded per message)."""
        path = req.path
        if path == "/sse":
            if req.method != "GET":
                raise self._not_allowed("GET")
            await self._legacy_stream(req)
            return None
        if path.startswith("/message"):
            if req.method != "POST":
                raise self._not_allowed("POST")
            return await self._legacy_post(req)
        if req.method == "POST":
            return await self._post(req)
        if req.method == "GET":
            await self._get(req)
            return None
        if req.method == "DELETE":
            await self._delete(req)
            return None
        raise self._not_allowed("GET, POST, DELETE")

    @staticmethod
    def _not_allowed(allow: str) -> HttpFailure:
        return HttpFailure(
            405,
            RpcError(rpc.INVALID_REQUEST, "Method Not Allowed"),
            headers=[(b"allow", allow.encode())],
        )

    def _new_session(self, req: Request, era: str, msg: JsonObj | None = None) -> DownstreamSession:
        """A new session (``modern``: the route and key's shared one); 503 when refused."""
        try:
            if era == "modern":
                return self.runtime.stateless(req.route.id, req.virtual_key_id)
            return self.runtime.new_session(era, req.route.id, req.virtual_key_id)
        except SessionRefused as exc:
            raise HttpFailure(
                503,
                RpcError(SESSION_LIMIT_CODE, f"Service Unavailable: {exc}"),
                msg_id=msg.get("id") if msg else None,
                method=msg.get("method") if msg else None,
                error_type="session_limit",
                headers=[(b"retry-after", b"30")],
            ) from None

    def _session(self, req: Request, key: str, era: str) -> DownstreamSession:
        session = self.runtime.find_session(key) if len(key) <= SESSION_HEADER_MAX else None
        if (
            session is None
            or session.closed
            or session.era != era
            or session.route_id != req.route.id
            or session.virtual_key_id != req.virtual_key_id
        ):
            raise HttpFailure(404, RpcError(rpc.INVALID_REQUEST, "Session not found"))
        return session

    async def _read(self, req: Request) -> Any:
        try:
            raw = await req.read_body(BODY_LIMIT)
        except PayloadTooLarge as exc:
            raise HttpFailure(413, RpcError(rpc.INVALID_REQUEST, exc.message)) from None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise HttpFailure(400, RpcError(rpc.PARSE_ERROR, f"Parse error: {exc}")) from None

    @staticmethod
    def _messages(payload: Any, *, batches: bool, where: str) -> tuple[list[JsonObj], bool]:
        if isinstance(payload, list):
            if not batches:
                raise HttpFailure(
                    400,
                    RpcError(rpc.INVALID_REQUEST, f"JSON-RPC batches are not supported {where}"),
                )
            if not payload:
                raise HttpFailure(400, RpcError(rpc.INVALID_REQUEST, "empty batch"))
            return [Ingress._checked(m) for m in payload], True
        return [Ingress._checked(payload)], False

    @staticmethod
    def _checked(msg: Any) -> JsonObj:
        try:
            return rpc.check_message(msg)
        except RpcError as exc:
            msg_id = msg.get("id") if isinstance(msg, dict) else None
            raise HttpFailure(400, exc, msg_id=msg_id if rpc.valid_id(msg_id) else None) from None

    # ------------------------------------------------------------------ streamable: POST

    async def _post(self, req: Request) -> Call | None:
        json_ok, sse_ok = accepts(req.headers.get("accept"))
        if not (json_ok or sse_ok):
            raise HttpFailure(
                406,
                RpcError(
                    rpc.INVALID_REQUEST,
                    "Not Acceptable: Accept must include application/json or text/event-stream",
                ),
            )
        payload = await self._read(req)
        key = req.headers.get("mcp-session-id")
        if key:
            session = self._session(req, key, "handshake")
            version = req.headers.get("mcp-protocol-version")
            if version is not None and version not in HANDSHAKE_VERSIONS:
                raise HttpFailure(
                    400,
                    RpcError(
                        rpc.INVALID_REQUEST,
                        f"Bad Request: unsupported protocol version {version[:QUOTE_MAX]!r} "
                        "(supported: "
                        f"{', '.join(HANDSHAKE_VERSIONS)})",
                    ),
                )
            messages, batch = self._messages(
                payload,
                batches=session.protocol_version in BATCH_VERSIONS,
                where=f"in protocol version {session.protocol_version}",
            )
            await self._exchange(Exchange(req, session, sse_ok=sse_ok), messages, batch)
            return None
        messages, _ = self._messages(payload, batches=False, where="without a session")
        msg = messages[0]
        if rpc.is_request(msg) and msg["method"] == "initialize":
            await self._initialize(req, msg)
            return None
        if is_modern(msg, req.headers):
            if rpc.is_request(msg):
                try:
                    check_modern(msg, req.headers)
                except HttpFailure as exc:
                    exc.method = msg["method"]
                    raise
                if msg["method"] not in self.handler.modern_methods:
                    raise HttpFailure(
                        404,
                        RpcError(rpc.METHOD_NOT_FOUND, "Method not found", msg["method"]),
                        msg_id=msg["id"],
                        method=msg["method"],
                        error_type="method_not_found",
                    )
            session = self._new_session(req, "modern", msg)
            session.protocol_version = MODERN_VERSIONS[0]
            await self._exchange(Exchange(req, session, sse_ok=sse_ok), messages, False)
            return None
        raise HttpFailure(
            400,
            RpcError(rpc.INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required"),
            msg_id=msg.get("id"),
            method=msg.get("method"),
        )

    async def _initialize(self, req: Request, msg: JsonObj) -> None:
        session = self._new_session(req, "handshake", msg)
        exchange = Exchange(req, session, sse_ok=False)
        call = Call(session=session.short)
        response = await self._run(Context(req, session, exchange), msg, call)
        ok = response is not None and "result" in response
        if ok:
            headers = [(b"mcp-session-id", session.key.encode())]
        else:
            headers = []
            await self.runtime.end_session(session)
        await exchange.finish(
            [response] if response else [], batch=False, cancelled=[], headers=headers
        )
        call.status_code = req.status
        self.handler.record(req, call)

    async def _exchange(self, exchange: Exchange, messages: list[JsonObj], batch: bool) -> None:
        req, session = exchange.req, exchange.session
        session.touch()
        ctx = Context(req, session, exchange)
        for msg in messages:
            if rpc.is_response(msg):
                await self.handler.response(ctx, msg)
            elif rpc.is_notification(msg):
                await self.handler.notification(ctx, msg)
        requests = [m for m in messages if rpc.is_request(m)]
        if not requests:
            if not exchange.legacy:
                await req.respond(202, b"")
            return
        handle = None if session.era == "modern" else session.short
        calls = [Call(session=handle) for _ in requests]
        entries: list[InFlight] = []  # this POST's calls, filled in by _run
        watcher = None
        gone = asyncio.Event()
        if not exchange.legacy:
            watcher = asyncio.create_task(self._watch(req, entries, gone))
        try:
            answers = await asyncio.gather(
                *(self._run(ctx, m, c, entries) for m, c in zip(requests, calls, strict=True))
            )
        finally:
            if watcher is not None:
                watcher.cancel()
        responses = [a for a in answers if a is not None]
        cancelled = [
            rpc.error(m["id"], RpcError(rpc.REQUEST_CANCELLED, "request cancelled"))
            for m, a in zip(requests, answers, strict=True)
            if a is None
        ]
        await exchange.finish(responses, batch=batch, cancelled=cancelled)
        for call in calls:
            if gone.is_set():  # as the LLM plane records a client that left mid-answer
                call.status_code = 499
            else:
                call.status_code = 202 if exchange.legacy else (req.status or 200)
            self.handler.record(req, call)

    async def _watch(self, req: Request, entries: list[InFlight], gone: asyncio.Event) -> None:
        """The client went away: cancel this POST's calls (their answers have nowhere to go)."""
        await req.watch_disconnect()
        gone.set()
        for entry in entries:
            entry.cancel("client disconnected")

    async def _run(
        self, ctx: Context, msg: JsonObj, call: Call, entries: list[InFlight] | None = None
    ) -> JsonObj | None:
        """One request in its own task, so a cancellation (the client's, an admin's) stops just
        it. None: the client cancelled it, so it gets no answer."""
        call.request_id, call.method = str(msg["id"]), msg["method"]
        params = msg.get("params")
        meta = params.get("_meta") if isinstance(params, dict) else None
        token = meta.get("progressToken") if isinstance(meta, dict) else None
        if isinstance(meta, dict):
            named = meta.get("agent-session-id")
            if isinstance(named, str) and named:
                call.agent_session = named[:SESSION_ID_MAX]
        registry = self.runtime.registry
        entry = registry.begin(ctx.session, ctx.req.route.id, msg["id"], msg["method"], token)
        if entries is not None:
            entries.append(entry)
        task = asyncio.create_task(self.handler.request(ctx, msg, call, entry))
        entry.task = task
        current = asyncio.current_task()
        try:
            answer: JsonObj | None = await task
        except asyncio.CancelledError:
            if not task.cancelled() or (current is not None and current.cancelling()):
                raise
            call.cancelled = True
            reason = entry.cancel_reason or "cancelled"
            by_client = reason.startswith("client")
            call.fail(
                RpcError(rpc.REQUEST_CANCELLED, f"request cancelled: {reason}"),
                "client_cancelled" if by_client else "cancelled",
            )
            if by_client:
                answer = None
            else:
                answer = rpc.error(
                    msg["id"],
                    RpcError(
                        rpc.REQUEST_CANCELLED,
                        f"request cancelled: {reason}",
                        {"cancelled": True, "method": msg["method"]},
                    ),
                )
        finally:
            if not task.done():
                task.cancel()
            registry.end(ctx.session, entry, call.error)
        if call.result_status is None:
            call.result_status = "success"
        return answer

    # -------------------------------------------------------------- streamable: GET, DELETE

    async def _get(self, req: Request) -> None:
        key = req.headers.get("mcp-session-id")
        if not key:
            raise self._not_allowed("POST")
        session = self._session(req, key, "handshake")
        if not accepts(req.headers.get("accept"))[1]:
            raise HttpFailure(
                406,
                RpcError(
                    rpc.INVALID_REQUEST, "Not Acceptable: Accept must include text/event-stream"
                ),
            )
        if session.stream is not None:
            raise HttpFailure(
                409,
                RpcError(
                    rpc.INVALID_REQUEST, "Conflict: a stream is already open for this session"
                ),
            )
        stream = Stream()
        session.stream = stream
        session.touch()
        try:
            await self._pump(req, stream, b"")
        finally:
            if session.stream is stream:
                session.stream = None
            session.touch()

    async def _delete(self, req: Request) -> None:
        key = req.headers.get("mcp-session-id")
        if not key:
            raise self._not_allowed("POST")
        session = self._session(req, key, "handshake")
        await self.runtime.end_session(session)
        await req.respond(200, b"")

    async def _pump(self, req: Request, stream: Stream, prelude: bytes) -> None:
        """Write a standalone stream until it ends (session closed, gateway draining) or the
        client leaves."""
        await req.start(200, list(SSE_HEADERS))
        await req.body(prelude, more=True)

        async def watch() -> None:
            await req.watch_disconnect()
            stream.end()

        watcher = asyncio.create_task(watch())
        try:
            while not watcher.done():
                try:
                    event = await asyncio.wait_for(stream.get(), PING_S)
                except TimeoutError:
                    await req.body(b": ping\n\n", more=True)
                    continue
                if event is None:
                    break
                await req.body(event, more=True)
            if not watcher.done():
                await req.body(b"", more=False)
        finally:
            watcher.cancel()

    # ------------------------------------------------------------------ legacy HTTP+SSE

    async def _legacy_stream(self, req: Request) -> None:
        session = self._new_session(req, "sse")
        stream = Stream()
        session.stream = stream
        endpoint = f"{req.route.path_prefix.rstrip('/')}/message?session_id={session.key}"
        try:
            await self._pump(req, stream, sse_event(endpoint, "endpoint"))
        finally:
            session.stream = None
            await self.runtime.end_session(session)

    async def _legacy_post(self, req: Request) -> Call | None:
        key = parse_qs(req.query).get("session_id", [""])[0]
        if not key:
            raise HttpFailure(400, RpcError(rpc.INVALID_REQUEST, "session_id is required"))
        session = self._session(req, key, "sse")
        payload = await self._read(req)
        messages, batch = self._messages(payload, batches=True, where="")
        exchange = Exchange(req, session, sse_ok=False, legacy=True)
        await req.respond(202, b"Accepted", b"text/plain")
        task = asyncio.create_task(self._legacy_exchange(exchange, messages, batch))
        session.own_task(task)
        return None

    async def _legacy_exchange(
        self, exchange: Exchange, messages: list[JsonObj], batch: bool
    ) -> None:
        try:
            await self._exchange(exchange, messages, batch)
        except Exception:
            log.exception("mcp_request_failed", extra={"route_id": exchange.req.route.id})
