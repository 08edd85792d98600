"""What an MCP client may send to an MCP route's path: the HTTP rules of both eras, sessions,
and the legacy HTTP+SSE transport. What breaks a rule is an :class:`agw.errors.Refusal` whose
cause is the JSON-RPC error to answer with (rendered by :meth:`agw.mcp.plane.McpPlane.render`).

Paths under the route prefix: ``/sse`` (GET, legacy stream) and ``/message...`` (POST, legacy
messages); anything else is the streamable HTTP endpoint (POST, GET, DELETE).

A POST is, in this order: the dispatcher's refusal (its status, a JSON-RPC error, and
``WWW-Authenticate: Bearer`` on 401; the dispatcher's ``Host`` (421) and ``Origin`` (403)
checks, agw.edge.EdgeCheck, among them) -> ``Accept`` (neither JSON nor SSE: 406) ->
``Content-Type`` (not ``application/json``: 415 -32600, the body unread) -> body (over 4 MiB:
413; not JSON: 400 -32700; not a message: 400 -32600) -> the era:

- ``Mcp-Session-Id`` given: that session, held here or rebuilt from its sealed id (unknown,
  tampered, expired, or bound to another route or key: 404), its
  ``MCP-Protocol-Version`` checked (unsupported: 400 -32600), batches only for 2025-03-26 (and
  2024-11-05) sessions;
- an ``initialize`` request: a new handshake session, its id in the answer's header;
- ``params._meta`` names a protocol version (or the header says 2026-07-28): the stateless
  era, checked as 2026-07-28 asks (``Mcp-Method`` / ``Mcp-Name`` mismatch: 400 -32020;
  unsupported version: 400 -32022; unknown method: 404 -32601);
- otherwise: 400, the session id is required.

The result is the :class:`~agw.mcp.exchange.Exchange` that answers the POST (the plane runs
it). Notifications and responses alone: 202. A request is answered with JSON, unless the client
accepts SSE and something (progress, logging, a relayed request) must reach it before the
answer: then the answer becomes an SSE stream (``event: message`` per message). A client that
goes away cancels its calls.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import parse_qs

from agw import jsonfast
from agw.errors import PayloadTooLarge, Refusal
from agw.mcp import jsonrpc as rpc
from agw.mcp.exchange import SSE_HEADERS, Call, Exchange, Method
from agw.mcp.jsonrpc import RpcError
from agw.mcp.protocol import (
    BATCH_VERSIONS,
    HANDSHAKE_VERSIONS,
    META_CAPABILITIES,
    META_VERSION,
    MODERN,
    MODERN_VERSIONS,
    NAME_BEARING,
    SUPPORTED_VERSIONS,
)
from agw.mcp.session_id import ID_MAX
from agw.mcp.sessions import DownstreamSession, SessionRefused, Stream
from agw.mcp.state import McpState
from agw.request import Request
from agw.sse import frame
from agw.types import JsonObj

BODY_LIMIT = 4 * 1024 * 1024
PING_S = 15.0  # comment line on an idle standalone stream, so a dead client is noticed
# Header values read here are bounded before use: a session id longer than the gateway's own
# (a sealed id, agw.mcp.session_id) is unknown at once; a longer Mcp-Name cannot match and is
# not decoded; what an error message quotes back is cut.
SESSION_HEADER_MAX = ID_MAX
NAME_HEADER_MAX = 8192
QUOTE_MAX = 40
SESSION_LIMIT_CODE = -32000  # no room for another session (HTTP 503)
PROTOCOL = "protocol_validation_failed"  # the usage error type of a message that breaks a rule
_B64_SENTINEL = re.compile(r"^=\?base64\?(?P<payload>.*)\?=$")
ACCEPTS_KEPT = 256  # Accept headers whose reading an ingress keeps (clients send a few)


def refuse(
    status: int,
    error: RpcError,
    error_type: str = PROTOCOL,
    headers: Sequence[tuple[bytes, bytes]] = (),
    retry_after: int | None = None,
) -> Refusal:
    """The refusal of a message: ``error`` (its ``detail``) is the JSON-RPC error it is
    answered with; ``error_type`` the usage row's."""
    return Refusal(status, error_type, error.message, headers, retry_after, detail=error)


def about(call: Call, msg_id: Any, method: Any = None) -> Call:
    """Name the message a refusal answers (its id, its method) on the usage row."""
    valid = rpc.valid_id(msg_id)
    call.msg_id = msg_id if valid else None
    call.request_id = str(msg_id) if valid else None
    if isinstance(method, str):
        call.method = method
    return call


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
    if not value.startswith("=?"):
        return value
    m = _B64_SENTINEL.fullmatch(value)
    if m is None:
        return value
    try:
        raw = base64.b64decode(m.group("payload"), validate=True)
        return raw.decode()
    except (binascii.Error, UnicodeDecodeError):
        return None


def check_modern(msg: JsonObj, headers: Mapping[str, str], call: Call) -> None:
    """The 2026-07-28 request checks, in the order its SDK applies them."""
    params = msg.get("params") or {}
    meta = params.get("_meta")
    if not isinstance(meta, dict) or META_VERSION not in meta or META_CAPABILITIES not in meta:
        about(call, msg.get("id"), msg["method"])
        raise refuse(
            400,
            RpcError(
                rpc.INVALID_PARAMS,
                f"params._meta must carry {META_VERSION!r} and {META_CAPABILITIES!r}",
            ),
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
        about(call, msg.get("id"), method)
        raise refuse(400, RpcError(rpc.HEADER_MISMATCH, mismatch))
    if version not in MODERN_VERSIONS:
        about(call, msg.get("id"), method)
        raise refuse(
            400,
            RpcError(
                rpc.UNSUPPORTED_PROTOCOL_VERSION,
                "Unsupported protocol version",
                {"supported": SUPPORTED_VERSIONS, "requested": version},
            ),
        )


def is_modern(msg: JsonObj, headers: Mapping[str, str]) -> bool:
    params = msg.get("params")
    meta = params.get("_meta") if isinstance(params, dict) else None
    if isinstance(meta, dict) and META_VERSION in meta:
        return True
    return headers.get("mcp-protocol-version") in MODERN_VERSIONS


def peek(raw: bytes) -> tuple[str | None, str | None]:
    """(method, id) of a body, best effort, for the usage row of a refused request."""
    try:
        msg = jsonfast.loads(raw)
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


def not_allowed(allow: str) -> Refusal:
    return refuse(
        405,
        RpcError(rpc.INVALID_REQUEST, "Method Not Allowed"),
        headers=[(b"allow", allow.encode())],
    )


async def read(req: Request) -> Any:
    """The body, parsed; it must say it is JSON (415 before it is read otherwise: what a
    browser may send cross-site without a CORS preflight, ``text/plain``, forms or no type, is
    never ``application/json``; the official SDKs' servers refuse the same)."""
    mime = req.media_type
    if mime != "application/json":
        error = RpcError(
            rpc.INVALID_REQUEST,
            "Unsupported Media Type: Content-Type must be application/json, "
            f"not {mime[:QUOTE_MAX] or 'none'}",
        )
        raise refuse(415, error)
    try:
        raw = await req.read_body(BODY_LIMIT)
    except PayloadTooLarge as exc:
        error = RpcError(rpc.INVALID_REQUEST, exc.message)
        raise refuse(413, error) from error
    try:
        return jsonfast.loads(raw)
    except (ValueError, RecursionError) as exc:
        error = RpcError(rpc.PARSE_ERROR, f"Parse error: {exc}")
        raise refuse(400, error) from error


def checked(msg: Any, call: Call) -> JsonObj:
    try:
        return rpc.check_message(msg)
    except RpcError as exc:
        about(call, msg.get("id") if isinstance(msg, dict) else None)
        raise refuse(400, exc) from exc


def messages_of(
    payload: Any, call: Call, *, batches: bool, where: str | None = None
) -> tuple[list[JsonObj], bool]:
    """The messages of a body and whether it was a batch (allowed only with ``batches``;
    ``where`` says when they are not, for the error)."""
    if isinstance(payload, list):
        if not batches:
            raise refuse(
                400,
                RpcError(rpc.INVALID_REQUEST, f"JSON-RPC batches are not supported {where}"),
            )
        if not payload:
            raise refuse(400, RpcError(rpc.INVALID_REQUEST, "empty batch"))
        return [checked(m, call) for m in payload], True
    return [checked(payload, call)], False


class Ingress:
    """The HTTP rules of an MCP route (see the module docstring)."""

    def __init__(
        self,
        state: McpState,
        handshake_methods: Mapping[str, Method],
        modern_methods: Mapping[str, Method],
    ) -> None:
        self.state = state
        self.handshake_methods = handshake_methods
        self.modern_methods = modern_methods
        self._accepts: dict[str, tuple[bool, bool]] = {}  # Accept header -> accepts()

    def accepts(self, header: str | None) -> tuple[bool, bool]:
        """:func:`accepts`, remembered per header value."""
        if header is None:
            return True, False
        known = self._accepts.get(header)
        if known is None:
            if len(self._accepts) >= ACCEPTS_KEPT:
                self._accepts.clear()
            known = self._accepts[header] = accepts(header)
        return known

    def _exchange(
        self,
        req: Request,
        session: DownstreamSession,
        messages: list[JsonObj],
        *,
        batch: bool = False,
        sse_ok: bool,
        legacy: bool = False,
        opens: bool = False,
    ) -> Exchange:
        methods = self.modern_methods if session.modern else self.handshake_methods
        registry = self.state.registry
        return Exchange(
            req,
            session,
            registry,
            methods,
            messages,
            batch=batch,
            sse_ok=sse_ok,
            legacy=legacy,
            opens=opens,
        )

    def _new_session(
        self, req: Request, era: str, call: Call, msg: JsonObj | None = None
    ) -> DownstreamSession:
        """A new session (``modern``: the route and key's shared one); 503 when refused."""
        try:
            if era == "modern":
                return self.state.stateless(req.route.id, req.owner_id)
            return self.state.new_session(era, req.route.id, req.owner_id)
        except SessionRefused as exc:
            if msg is not None:
                about(call, msg.get("id"), msg.get("method"))
            error = RpcError(SESSION_LIMIT_CODE, f"Service Unavailable: {exc}")
            raise refuse(503, error, "session_limit", retry_after=30) from error

    def _session(self, req: Request, key: str, era: str) -> DownstreamSession:
        """The session ``key`` names: held here (no decryption), or rebuilt from its sealed id
        (handshake era); 404 when unknown, closed, or another era's, route's or owner's."""
        if len(key) > SESSION_HEADER_MAX:
            raise refuse(404, RpcError(rpc.INVALID_REQUEST, "Session not found"))
        session = self.state.find_session(key)
        if session is None and era == "handshake":
            try:
                session = self.state.rebuild(key, req.route.id, req.owner_id)
            except SessionRefused as exc:
                error = RpcError(SESSION_LIMIT_CODE, f"Service Unavailable: {exc}")
                raise refuse(503, error, "session_limit", retry_after=30) from error
        if (
            session is None
            or session.closed
            or session.era != era
            or session.route_id != req.route.id
            or session.owner != req.owner_id
        ):
            raise refuse(404, RpcError(rpc.INVALID_REQUEST, "Session not found"))
        return session

    # ------------------------------------------------------------------ streamable: POST

    async def post(self, req: Request, call: Call) -> Exchange:
        """The exchange a POST asks for (an ``initialize`` opens a new handshake session and is
        its exchange's only message)."""
        headers = req.headers
        json_ok, sse_ok = self.accepts(headers.get("accept"))
        if not (json_ok or sse_ok):
            raise refuse(
                406,
                RpcError(
                    rpc.INVALID_REQUEST,
                    "Not Acceptable: Accept must include application/json or text/event-stream",
                ),
            )
        payload = await read(req)
        key = headers.get("mcp-session-id")
        if key:
            session = self._session(req, key, "handshake")
            version = headers.get("mcp-protocol-version")
            if version is not None and version not in HANDSHAKE_VERSIONS:
                raise refuse(
                    400,
                    RpcError(
                        rpc.INVALID_REQUEST,
                        f"Bad Request: unsupported protocol version {version[:QUOTE_MAX]!r} "
                        f"(supported: {', '.join(HANDSHAKE_VERSIONS)})",
                    ),
                )
            if isinstance(payload, list):
                batches = session.protocol_version in BATCH_VERSIONS
                where = f"in protocol version {session.protocol_version}"
                messages, batch = messages_of(payload, call, batches=batches, where=where)
            else:
                messages, batch = [checked(payload, call)], False
            return self._exchange(req, session, messages, batch=batch, sse_ok=sse_ok)
        messages, _ = messages_of(payload, call, batches=False, where="without a session")
        msg = messages[0]
        request = rpc.is_request(msg)
        if request and msg["method"] == "initialize":
            session = self._new_session(req, "handshake", call, msg)
            return self._exchange(req, session, messages, sse_ok=False, opens=True)
        if is_modern(msg, headers):
            if request:
                check_modern(msg, headers, call)
                if msg["method"] not in self.modern_methods:
                    about(call, msg["id"], msg["method"])
                    raise refuse(
                        404,
                        RpcError(rpc.METHOD_NOT_FOUND, "Method not found", msg["method"]),
                        "method_not_found",
                    )
            session = self._new_session(req, "modern", call, msg)
            session.protocol_version = MODERN
            return self._exchange(req, session, messages, sse_ok=sse_ok)
        about(call, msg.get("id"), msg.get("method"))
        raise refuse(
            400, RpcError(rpc.INVALID_REQUEST, "Bad Request: Mcp-Session-Id header is required")
        )

    # -------------------------------------------------------------- streamable: GET, DELETE

    async def get(self, req: Request) -> None:
        key = req.headers.get("mcp-session-id")
        if not key:
            raise not_allowed("POST")
        session = self._session(req, key, "handshake")
        if not accepts(req.headers.get("accept"))[1]:
            raise refuse(
                406,
                RpcError(
                    rpc.INVALID_REQUEST, "Not Acceptable: Accept must include text/event-stream"
                ),
            )
        if session.stream is not None:
            raise refuse(
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

    async def delete(self, req: Request) -> None:
        key = req.headers.get("mcp-session-id")
        if not key:
            raise not_allowed("POST")
        session = self._session(req, key, "handshake")
        await self.state.delete_session(session)
        await req.respond(200, b"")

    @staticmethod
    async def _pump(req: Request, stream: Stream, prelude: bytes) -> None:
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

    async def legacy_stream(self, req: Request, call: Call) -> None:
        session = self._new_session(req, "sse", call)
        stream = Stream()
        session.stream = stream
        endpoint = f"{req.route.path_prefix.rstrip('/')}/message?session_id={session.key}"
        try:
            await self._pump(req, stream, frame(endpoint, "endpoint"))
        finally:
            session.stream = None
            await self.state.end_session(session)

    async def legacy_post(self, req: Request, call: Call) -> Exchange:
        """The exchange of a legacy message POST (answered on the session's stream)."""
        key = parse_qs(req.query).get("session_id", [""])[0]
        if not key:
            raise refuse(400, RpcError(rpc.INVALID_REQUEST, "session_id is required"))
        session = self._session(req, key, "sse")
        payload = await read(req)
        messages, batch = messages_of(payload, call, batches=True, where="")
        return self._exchange(req, session, messages, batch=batch, sse_ok=False, legacy=True)
