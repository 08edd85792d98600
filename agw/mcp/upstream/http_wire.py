"""The streamable HTTP wire of :class:`agw.mcp.upstream.http.StreamableHttpUpstream`: one message
POSTed and its answer read, the headers of each era, and the standalone GET stream.

A POST is answered with JSON or an SSE stream; on a stream, the messages before the response go to
the call's ``on_message`` (or the listener when the caller passed none), empty events (priming)
are skipped. Any non-2xx answer is an :class:`UpstreamError` with the status and a body excerpt
(modern era: a JSON-RPC error body is an :class:`RpcError`); HTTP 404 for a request that carried a
session id is :class:`SessionExpired`. What the GET stream carries goes to the ``listener``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
from typing import Any

from agw import jsonfast
from agw.config.mcp import McpService
from agw.mcp.httpclient import (
    BodyTooLarge,
    HttpClient,
    HttpClientError,
    Response,
    Unreachable,
)
from agw.mcp.jsonrpc import RequestId, RpcError, encode, is_request, is_response
from agw.mcp.protocol import (
    CLIENT_INFO,
    META_CAPABILITIES,
    META_CLIENT_INFO,
    META_VERSION,
    MODERN_PROTOCOL_VERSION,
    NAME_BEARING,
)
from agw.mcp.upstream.base import (
    MESSAGE_LIMIT,
    Listener,
    OnMessage,
    Upstream,
    UpstreamError,
    auth_headers,
    refusal,
)
from agw.request import current_client_token, current_trace, traceparent
from agw.sse import SseError, SseEvent, SseParser
from agw.types import JsonObj

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
EXCERPT_CHARS = 300
GET_RETRY_FIRST_S = 1.0
GET_RETRY_MAX_S = 30.0
ACCEPT_BOTH = "application/json, text/event-stream"
_HEADER_SAFE = re.compile(r"^[\x20-\x7E]*$")
_B64_SENTINEL = re.compile(r"^=\?base64\?.*\?=$")


class SessionExpired(UpstreamError):
    """HTTP 404 for a request that carried a session id."""

    def __init__(self, service_id: str) -> None:
        super().__init__(f"mcp service {service_id} session expired (HTTP 404)", status=404)


def header_value(value: str) -> str:
    """``value`` as an HTTP header value: verbatim when plain printable ASCII, else the
    ``=?base64?...?=`` sentinel form of the modern era."""
    if _HEADER_SAFE.match(value) and value == value.strip() and not _B64_SENTINEL.match(value):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode('ascii')}?="


def excerpt(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").strip()[:EXCERPT_CHARS]


async def read_capped(resp: Response, limit: int, service_id: str) -> bytes:
    """The whole body, or UpstreamError naming the limit as soon as it is passed (a declared
    ``Content-Length`` over it is refused before reading)."""
    try:
        return await resp.read(limit)
    except BodyTooLarge:
        raise UpstreamError(
            f"mcp service {service_id} answered a JSON body over the {limit // (1 << 20)} MiB limit"
        ) from None


class HttpWire(Upstream):
    """What a streamable HTTP upstream sends and reads; the session and its handshake are
    :class:`agw.mcp.upstream.http.StreamableHttpUpstream`'s."""

    def __init__(self, service: McpService, listener: Listener | None = None) -> None:
        super().__init__(service, listener)
        self.modern = False  # True when the server spoke only the 2026-07-28 era
        self._http: HttpClient | None = None
        self._static: dict[str, str] | None = None  # the headers every POST carries
        self._generation = 0  # bumped when an expired session is replaced
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------------------ POST

    def _client(self) -> HttpClient:
        if self._closed:
            raise UpstreamError(f"mcp service {self.service.id} is closed")
        if self._http is None or self._http.closed:
            try:
                self._http = HttpClient(self.service.url, connect_timeout=CONNECT_TIMEOUT_S)
            except ValueError as exc:
                raise UpstreamError(f"mcp service {self.service.id} unreachable: {exc}") from None
        return self._http

    def _with_meta(self, params: JsonObj | None) -> JsonObj | None:
        if not self.modern:
            return params
        out = dict(params or {})
        meta = out.get("_meta")
        out["_meta"] = {
            **(meta if isinstance(meta, dict) else {}),
            META_VERSION: MODERN_PROTOCOL_VERSION,
            META_CAPABILITIES: {},  # no sampling/elicitation/roots: MRTR is not relayed
            META_CLIENT_INFO: CLIENT_INFO,
        }
        return out

    def _headers(self, method: str | None, params: Any) -> dict[str, str]:
        static = self._static
        if static is None:
            static = {"accept": ACCEPT_BOTH, "content-type": "application/json"}
            static = self._static = static | auth_headers(self.service)
        headers = dict(static)
        if self.modern:
            headers["mcp-protocol-version"] = MODERN_PROTOCOL_VERSION
            if method:
                headers["mcp-method"] = method
                key = NAME_BEARING.get(method)
                name = params.get(key) if key and isinstance(params, dict) else None
                if isinstance(name, str):
                    headers["mcp-name"] = header_value(name)
            return headers
        if self.protocol_version:
            headers["mcp-protocol-version"] = self.protocol_version
        if self.session_id:
            headers["mcp-session-id"] = self.session_id
        return headers

    async def _post(
        self,
        msg: JsonObj,
        call_id: int | None,
        on_message: OnMessage | None,
        method: str | None,
    ) -> JsonObj | None:
        """POST one message; for a request (``call_id``) its response message, else None."""
        sid = self.service.id
        if self._closed:
            raise UpstreamError(f"mcp service {sid} is closed")
        headers = self._headers(method, msg.get("params"))
        trace = current_trace.get()
        if trace is not None:  # the data-plane request this message is sent for
            headers["traceparent"] = traceparent(trace)
        if self.service.forward_client_token:  # the caller's own JWT, when it asked for that
            token = current_client_token.get()
            if token:
                headers["authorization"] = f"Bearer {token}"
        sent_session = "mcp-session-id" in headers
        body = encode(msg)
        resp = await self._send(body, headers)
        try:
            if resp.status == 404 and sent_session:
                raise SessionExpired(sid)
            if resp.status >= 300 or resp.status < 200:
                await self._refused(resp, call_id)
            if msg.get("method") == "initialize":
                self.session_id = resp.headers.get("mcp-session-id") or None
            if resp.status == 202 or call_id is None:
                return None
            ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype == "text/event-stream":
                return await self._read_stream(resp, call_id, on_message)
            return await self._read_json(resp, call_id, on_message)
        except HttpClientError as exc:
            resp.close()
            if self._closed:
                raise UpstreamError(f"mcp service {sid} is closed") from None
            raise UpstreamError(f"mcp service {sid} connection failed: {exc!r}") from None
        except BaseException:
            resp.close()  # modern era: closing the stream is the cancellation
            raise
        finally:
            resp.release()

    async def _post_quietly(self, msg: JsonObj) -> None:
        try:
            await self._post(msg, None, None, msg.get("method"))
        except UpstreamError as exc:
            log.info("mcp_send_failed", extra={"service_id": self.service.id, "error": str(exc)})

    async def _send(
        self, body: bytes | None, headers: dict[str, str], method: str = "POST"
    ) -> Response:
        """The answer to one request (its body unread). A kept-alive connection the server
        closed meanwhile (nothing was answered on it) is retried once on a fresh one."""
        sid = self.service.id
        try:
            return await self._client().request(method, headers, body)
        except Unreachable as exc:
            raise UpstreamError(f"mcp service {sid} unreachable: {exc}") from None
        except HttpClientError as exc:
            if self._closed:
                raise UpstreamError(f"mcp service {sid} is closed") from None
            raise UpstreamError(f"mcp service {sid} connection failed: {exc!r}") from None

    async def _refused(self, resp: Response, call_id: int | None) -> None:
        data = await resp.read_prefix(64 * 1024)
        if self.modern:
            with contextlib.suppress(ValueError):
                answer = jsonfast.loads(data)
                if (
                    isinstance(answer, dict)
                    and isinstance(answer.get("error"), dict)
                    and answer.get("id") in (call_id, None)
                ):
                    raise RpcError.from_obj(answer["error"])
        location = resp.headers.get("location") if 300 <= resp.status < 400 else None
        if location:  # 301/302/303 to a POST: not followed (agw/mcp/httpclient.py)
            raise UpstreamError(
                f"mcp service {self.service.id} answered HTTP {resp.status}, a redirect to"
                f" {location[:200]!r} that a POST does not follow (only 307 and 308):"
                " configure the service's url as that target",
                status=resp.status,
            )
        raise UpstreamError(
            f"mcp service {self.service.id} answered HTTP {resp.status}: {excerpt(data)}",
            status=resp.status,
        )

    async def _read_json(
        self, resp: Response, call_id: int, on_message: OnMessage | None
    ) -> JsonObj:
        sid = self.service.id
        data = await read_capped(resp, MESSAGE_LIMIT, sid)
        try:
            parsed = jsonfast.loads(data)
        except ValueError:
            raise UpstreamError(
                f"mcp service {sid} answered invalid JSON: {excerpt(data)}", status=resp.status
            ) from None
        found: JsonObj | None = None
        for item in parsed if isinstance(parsed, list) else [parsed]:
            got = await self._incoming(item, call_id, on_message)
            if got is not None:
                found = got
        if found is None:
            raise UpstreamError(
                f"mcp service {sid} answered without a response to request {call_id}: "
                f"{excerpt(data)}"
            )
        return found

    async def _read_stream(
        self, resp: Response, call_id: int, on_message: OnMessage | None
    ) -> JsonObj:
        parser = SseParser(MESSAGE_LIMIT)
        try:
            async for chunk in resp.chunks():
                for event in parser.feed(chunk):
                    got = await self._event(event, call_id, on_message)
                    if got is not None:
                        return got
            for event in parser.close():
                got = await self._event(event, call_id, on_message)
                if got is not None:
                    return got
        except SseError as exc:
            raise UpstreamError(f"mcp service {self.service.id} sent a bad stream: {exc}") from None
        raise UpstreamError(
            f"mcp service {self.service.id} ended the stream before answering request {call_id}"
        )

    # ------------------------------------------------------------------------------ incoming

    async def _event(
        self, event: SseEvent, call_id: int | None, on_message: OnMessage | None
    ) -> JsonObj | None:
        if event.event != "message" or not event.data.strip():
            return None  # priming events and anything that is not a message
        try:
            msg = jsonfast.loads(event.data)
        except ValueError:
            log.info(
                "mcp_event_dropped",
                extra={"service_id": self.service.id, "reason": "invalid JSON"},
            )
            return None
        return await self._incoming(msg, call_id, on_message)

    async def _incoming(
        self, msg: Any, call_id: int | None, on_message: OnMessage | None
    ) -> JsonObj | None:
        """Route one message from the server; the response to ``call_id`` is returned."""
        sid = self.service.id
        if not isinstance(msg, dict):
            log.info("mcp_message_dropped", extra={"service_id": sid, "reason": "not an object"})
            return None
        if is_response(msg):
            if call_id is not None and msg["id"] == call_id:
                return msg
            log.info("mcp_unknown_response_dropped", extra={"service_id": sid})
            return None
        if not isinstance(msg.get("method"), str):
            log.info("mcp_message_dropped", extra={"service_id": sid, "reason": "no method"})
            return None
        if msg["method"] == "ping" and is_request(msg):
            self._own(asyncio.create_task(self._post_quietly({**_ok(msg["id"])})))
            return None
        if on_message is not None:
            try:
                await on_message(msg)
            except Exception as exc:
                log.warning(
                    "mcp_on_message_failed",
                    extra={"service_id": sid, "method": msg["method"], "error": repr(exc)},
                )
                if is_request(msg):
                    self._own(asyncio.create_task(self._post_quietly(refusal(msg))))
            return None
        self._own(asyncio.create_task(self._to_listener(msg)))
        return None

    async def _to_listener(self, msg: JsonObj) -> None:
        if self.listener is None:
            if is_request(msg):
                await self._post_quietly(refusal(msg))
            return
        try:
            await self.listener(self, msg)
        except Exception as exc:
            log.warning(
                "mcp_listener_failed",
                extra={"service_id": self.service.id, "method": msg["method"], "error": repr(exc)},
            )
            if is_request(msg):
                await self._post_quietly(refusal(msg))

    # ------------------------------------------------------------------------------ GET stream

    async def _listen(self, generation: int) -> None:
        """The standalone GET stream of this session, reopened while the session lives."""
        current_trace.set(None)  # what arrives here (and its answers) is no request's
        delay = GET_RETRY_FIRST_S
        while not self._closed and self._generation == generation:
            headers = self._headers(None, None)
            headers["accept"] = "text/event-stream"
            headers.pop("content-type")
            try:
                resp = await self._send(None, headers, "GET")
                try:
                    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                    if resp.status != 200 or ctype != "text/event-stream":
                        log.info(
                            "mcp_get_stream_unavailable",
                            extra={"service_id": self.service.id, "status": resp.status},
                        )
                        return
                    delay = GET_RETRY_FIRST_S
                    parser = SseParser(MESSAGE_LIMIT)
                    async for chunk in resp.chunks():
                        for event in parser.feed(chunk):
                            await self._event(event, None, None)
                finally:
                    resp.close()
            except (HttpClientError, SseError, UpstreamError) as exc:
                log.info(
                    "mcp_get_stream_failed",
                    extra={"service_id": self.service.id, "error": repr(exc)},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, GET_RETRY_MAX_S)

    def _own(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _ok(msg_id: RequestId) -> JsonObj:
    return {"jsonrpc": "2.0", "id": msg_id, "result": {}}
