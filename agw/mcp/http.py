"""The streamable HTTP upstream (aiohttp): one upstream MCP session, both eras.

Handshake era (tried first): POST ``initialize`` (no session, no version header), keep the
``Mcp-Session-Id`` it answers with, POST ``notifications/initialized``, then send
``Mcp-Session-Id`` and ``MCP-Protocol-Version`` on every request. A request whose session the
server no longer knows (HTTP 404 while a session id was sent) re-initialises once and is sent again.
A standalone GET SSE stream is opened after the handshake (none if the server answers 405); what
arrives there goes to the ``listener``.

Modern era (2026-07-28): when ``initialize`` gets an HTTP 4xx or a JSON-RPC error, the upstream
tries ``server/discover``; if that answers, every request carries ``MCP-Protocol-Version:
2026-07-28``, ``Mcp-Method`` (and ``Mcp-Name`` for ``tools/call``, ``resources/read``,
``prompts/get``) and the reserved ``_meta`` keys, and ``init_result`` is the discover result in the
shape of an initialize result. Cancelling a call closes its response stream (handshake era: also
POSTs ``notifications/cancelled`` with the upstream request id).

A POST is answered with JSON or an SSE stream; on a stream, the messages before the response go to
the call's ``on_message`` (or the listener when the caller passed none), empty events (priming)
are skipped. Any non-2xx answer is an :class:`UpstreamError` with the status and a body excerpt
(modern era: a JSON-RPC error body is an :class:`RpcError`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import re
from collections.abc import Coroutine
from typing import Any

import aiohttp

from agw.clock import now_ms
from agw.config.mcp import McpService
from agw.mcp.channel import (
    HANDSHAKE_TIMEOUT_S,
    error_response,
    initialize_params,
    ready_within,
    refusal,
)
from agw.mcp.jsonrpc import RequestId, RpcError, is_request, is_response, notification
from agw.mcp.jsonrpc import request as rpc_request
from agw.mcp.upstream import (
    CLIENT_INFO,
    DEFAULT_CALL_TIMEOUT_S,
    MESSAGE_LIMIT,
    MODERN_PROTOCOL_VERSION,
    Listener,
    OnMessage,
    Upstream,
    UpstreamError,
    auth_headers,
)
from agw.request import current_trace, traceparent
from agw.sse import SseError, SseEvent, SseParser
from agw.types import JsonObj

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
CLOSE_TIMEOUT_S = 5.0
EXCERPT_CHARS = 300
GET_RETRY_FIRST_S = 1.0
GET_RETRY_MAX_S = 30.0
ACCEPT_BOTH = "application/json, text/event-stream"
# Methods whose name (tool, prompt, resource uri) the modern era mirrors in Mcp-Name.
NAME_BEARING = {"tools/call": "name", "prompts/get": "name", "resources/read": "uri"}
META_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
_HEADER_SAFE = re.compile(r"^[\x20-\x7E]*$")
_B64_SENTINEL = re.compile(r"^=\?base64\?.*\?=$")


class _SessionExpired(UpstreamError):
    """HTTP 404 for a request that carried a session id."""

    def __init__(self, service_id: str) -> None:
        super().__init__(f"mcp service {service_id} session expired (HTTP 404)", status=404)


def header_value(value: str) -> str:
    """``value`` as an HTTP header value: verbatim when plain printable ASCII, else the
    ``=?base64?...?=`` sentinel form of the modern era."""
    if _HEADER_SAFE.match(value) and value == value.strip() and not _B64_SENTINEL.match(value):
        return value
    return f"=?base64?{base64.b64encode(value.encode()).decode('ascii')}?="


def unpack(answer: JsonObj) -> Any:
    """The ``result`` of a response message, or its error raised as RpcError."""
    if "error" in answer:
        raise RpcError.from_obj(answer["error"])
    return answer.get("result")


def excerpt(data: bytes) -> str:
    return data.decode("utf-8", errors="replace").strip()[:EXCERPT_CHARS]


class StreamableHttpUpstream(Upstream):
    """One MCP session with a streamable HTTP server (see the module docstring)."""

    def __init__(self, service: McpService, listener: Listener | None = None) -> None:
        super().__init__(service, listener)
        self.created_at_ms = now_ms()
        self.modern = False  # True when the server spoke only the 2026-07-28 era
        self._ids = itertools.count(1)
        self._http: aiohttp.ClientSession | None = None
        self._handshake: asyncio.Task[JsonObj] | None = None
        self._listen_task: asyncio.Task[None] | None = None
        self._generation = 0  # bumped when an expired session is replaced
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------------------ Upstream

    async def ensure_ready(self) -> JsonObj:
        if self.state == "ready" and self.init_result is not None:
            return self.init_result
        if self._closed:
            raise UpstreamError(f"mcp service {self.service.id} is closed")
        task = self._handshake
        if task is None or task.done():
            task = self._handshake = asyncio.create_task(self._do_handshake())
            task.add_done_callback(_retrieve)
        return await asyncio.shield(task)

    async def request(
        self,
        method: str,
        params: JsonObj | None = None,
        *,
        on_message: OnMessage | None = None,
        timeout: float | None = DEFAULT_CALL_TIMEOUT_S,  # noqa: ASYNC109
    ) -> Any:
        await ready_within(self, timeout)
        self.last_used_at_ms = now_ms()
        for attempt in range(2):
            generation = self._generation
            try:
                return unpack(await self._exchange(method, params, on_message, timeout))
            except _SessionExpired:
                if attempt:
                    break
                await self._reinitialise(generation)
        raise UpstreamError(
            f"mcp service {self.service.id} rejected a fresh session (HTTP 404)", status=404
        )

    async def notify(self, method: str, params: JsonObj | None = None) -> None:
        await self.ensure_ready()
        await self._post(notification(method, self._with_meta(params)), None, None, method)

    async def reply(
        self, request_id: RequestId, result: Any = None, error: JsonObj | None = None
    ) -> None:
        if self.modern or self._closed:
            log.info("mcp_reply_dropped", extra={"service_id": self.service.id})
            return
        msg = (
            error_response(request_id, error)
            if error is not None
            else {"jsonrpc": "2.0", "id": request_id, "result": result}
        )
        await self._post(msg, None, None, None)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.state = "closed"
        tasks = [t for t in (self._handshake, self._listen_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        http = self._http
        if http is None:
            return
        try:
            if self.session_id and not self.modern:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        headers = self._headers(None, None)
                        async with http.delete(self.service.url, headers=headers) as resp:
                            log.info(
                                "mcp_session_deleted",
                                extra={"service_id": self.service.id, "status": resp.status},
                            )
        finally:
            await http.close()

    # ------------------------------------------------------------------------------ handshake

    async def _do_handshake(self) -> JsonObj:
        self.state = "connecting"
        try:
            answer = await self._initialize()
        except BaseException as exc:
            self.state = "closed" if self._closed else "error"
            self.last_error = str(exc) if isinstance(exc, UpstreamError | RpcError) else repr(exc)
            raise
        self.init_result = answer
        self.state = "ready"
        self.last_error = None
        log.info(
            "mcp_upstream_ready",
            extra={
                "service_id": self.service.id,
                "protocol_version": self.protocol_version,
                "modern": self.modern,
            },
        )
        return answer

    async def _initialize(self) -> JsonObj:
        self.modern = False
        self.session_id = None
        self.protocol_version = None
        try:
            answer = await self._timed(
                "initialize", self._exchange("initialize", initialize_params(), None, None)
            )
            found = unpack(answer)
            if not isinstance(found, dict):
                raise UpstreamError(
                    f"mcp service {self.service.id} answered initialize with {found!r}"[:300]
                )
            init: JsonObj = found
        except (UpstreamError, RpcError) as exc:
            refused = isinstance(exc, RpcError) or (
                exc.status is not None and 400 <= exc.status < 500
            )
            if not refused:
                raise
            try:
                return await self._discover()
            except (UpstreamError, RpcError):
                self.modern = False
                raise exc from None
        version = init.get("protocolVersion")
        self.protocol_version = version if isinstance(version, str) else None
        await self._post(notification("notifications/initialized"), None, None, None)
        self._listen_task = asyncio.create_task(self._listen(self._generation))
        return init

    async def _discover(self) -> JsonObj:
        self.modern = True
        self.session_id = None
        answer = await self._timed(
            "server/discover", self._exchange("server/discover", None, None, None)
        )
        found = unpack(answer)
        if not isinstance(found, dict):
            raise UpstreamError(
                f"mcp service {self.service.id} answered server/discover with {found!r}"[:300]
            )
        versions = found.get("supportedVersions")
        if isinstance(versions, list) and MODERN_PROTOCOL_VERSION not in versions:
            raise UpstreamError(
                f"mcp service {self.service.id} does not support {MODERN_PROTOCOL_VERSION}"
                f" (supports {versions})"[:300]
            )
        self.protocol_version = MODERN_PROTOCOL_VERSION
        init: JsonObj = {
            "protocolVersion": MODERN_PROTOCOL_VERSION,
            "capabilities": found.get("capabilities") or {},
            "serverInfo": found.get("serverInfo") or _meta_server_info(found) or {},
        }
        if isinstance(found.get("instructions"), str):
            init["instructions"] = found["instructions"]
        return init

    async def _timed(self, method: str, work: Coroutine[Any, Any, JsonObj]) -> JsonObj:
        try:
            async with asyncio.timeout(HANDSHAKE_TIMEOUT_S):
                return await work
        except TimeoutError:
            raise UpstreamError(
                f"mcp service {self.service.id} did not answer {method}"
                f" within {HANDSHAKE_TIMEOUT_S:g}s"
            ) from None

    async def _reinitialise(self, generation: int) -> None:
        if self._generation == generation:
            self._generation += 1
            log.info("mcp_session_expired", extra={"service_id": self.service.id})
            if self._listen_task is not None:
                self._listen_task.cancel()
                self._own(self._listen_task)
                self._listen_task = None
            self.state = "connecting"
            self.init_result = None
        await self.ensure_ready()

    # ------------------------------------------------------------------------------ exchange

    async def _exchange(
        self,
        method: str,
        params: JsonObj | None,
        on_message: OnMessage | None,
        timeout: float | None,  # noqa: ASYNC109
    ) -> JsonObj:
        """One request, its answer message (response or error)."""
        call_id = next(self._ids)
        msg = rpc_request(call_id, method, self._with_meta(params))
        try:
            async with asyncio.timeout(timeout):
                answer = await self._post(msg, call_id, on_message, method)
        except TimeoutError:
            self._cancel_upstream(call_id, "timed out")
            raise UpstreamError(
                f"mcp service {self.service.id} did not answer {method} within {timeout:g}s"
            ) from None
        except asyncio.CancelledError:
            self._cancel_upstream(call_id, "cancelled by the client")
            raise
        if answer is None:
            raise UpstreamError(
                f"mcp service {self.service.id} answered {method} with no response (HTTP 202)"
            )
        return answer

    def _cancel_upstream(self, call_id: int, reason: str) -> None:
        if self.modern or self._closed:
            return  # modern era: closing the response stream was the cancellation
        msg = notification("notifications/cancelled", {"requestId": call_id, "reason": reason})
        self._own(asyncio.create_task(self._post_quietly(msg)))

    async def _post_quietly(self, msg: JsonObj) -> None:
        try:
            await self._post(msg, None, None, msg.get("method"))
        except UpstreamError as exc:
            log.info("mcp_send_failed", extra={"service_id": self.service.id, "error": str(exc)})

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise UpstreamError(f"mcp service {self.service.id} is closed")
        if self._http is None or self._http.closed:
            timeout = aiohttp.ClientTimeout(
                total=None, connect=CONNECT_TIMEOUT_S, sock_connect=CONNECT_TIMEOUT_S
            )
            self._http = aiohttp.ClientSession(timeout=timeout)
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
        headers = {"accept": ACCEPT_BOTH, "content-type": "application/json"}
        headers |= auth_headers(self.service)
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
        sent_session = "mcp-session-id" in headers
        body = json.dumps(msg, separators=(",", ":"), ensure_ascii=False).encode()
        resp = await self._send_post(body, headers)
        try:
            if resp.status == 404 and sent_session:
                raise _SessionExpired(sid)
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
        except aiohttp.ClientError as exc:
            resp.close()
            if self._closed:
                raise UpstreamError(f"mcp service {sid} is closed") from None
            raise UpstreamError(f"mcp service {sid} connection failed: {exc!r}") from None
        except BaseException:
            resp.close()  # modern era: closing the stream is the cancellation
            raise
        finally:
            resp.release()

    async def _send_post(self, body: bytes, headers: dict[str, str]) -> aiohttp.ClientResponse:
        """The response to one POST (its body unread). A pooled connection the server closed
        meanwhile (nothing was answered on it) is retried once on a fresh connection."""
        sid = self.service.id
        for attempt in range(2):
            try:
                return await self._client().post(self.service.url, data=body, headers=headers)
            except aiohttp.ClientConnectorError as exc:
                raise UpstreamError(f"mcp service {sid} unreachable: {exc}") from None
            except aiohttp.ServerDisconnectedError as exc:
                if attempt or self._closed:
                    raise UpstreamError(f"mcp service {sid} connection failed: {exc!r}") from None
            except aiohttp.ClientError as exc:
                if self._closed:
                    raise UpstreamError(f"mcp service {sid} is closed") from None
                raise UpstreamError(f"mcp service {sid} connection failed: {exc!r}") from None
        raise AssertionError("unreachable")

    async def _refused(self, resp: aiohttp.ClientResponse, call_id: int | None) -> None:
        data = await resp.content.read(64 * 1024)
        if self.modern:
            with contextlib.suppress(ValueError):
                answer = json.loads(data)
                if (
                    isinstance(answer, dict)
                    and isinstance(answer.get("error"), dict)
                    and answer.get("id") in (call_id, None)
                ):
                    raise RpcError.from_obj(answer["error"])
        raise UpstreamError(
            f"mcp service {self.service.id} answered HTTP {resp.status}: {excerpt(data)}",
            status=resp.status,
        )

    async def _read_json(
        self, resp: aiohttp.ClientResponse, call_id: int, on_message: OnMessage | None
    ) -> JsonObj:
        sid = self.service.id
        data = await read_capped(resp, MESSAGE_LIMIT, sid)
        try:
            parsed = json.loads(data)
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
        self, resp: aiohttp.ClientResponse, call_id: int, on_message: OnMessage | None
    ) -> JsonObj:
        parser = SseParser(MESSAGE_LIMIT)
        try:
            async for chunk in resp.content.iter_any():
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

    async def _event(
        self, event: SseEvent, call_id: int | None, on_message: OnMessage | None
    ) -> JsonObj | None:
        if event.event != "message" or not event.data.strip():
            return None  # priming events and anything that is not a message
        try:
            msg = json.loads(event.data)
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
                async with self._client().get(self.service.url, headers=headers) as resp:
                    ctype = resp.headers.get("content-type", "").split(";")[0].strip().lower()
                    if resp.status != 200 or ctype != "text/event-stream":
                        log.info(
                            "mcp_get_stream_unavailable",
                            extra={"service_id": self.service.id, "status": resp.status},
                        )
                        return
                    delay = GET_RETRY_FIRST_S
                    parser = SseParser(MESSAGE_LIMIT)
                    async for chunk in resp.content.iter_any():
                        for event in parser.feed(chunk):
                            await self._event(event, None, None)
            except (aiohttp.ClientError, SseError, UpstreamError) as exc:
                log.info(
                    "mcp_get_stream_failed",
                    extra={"service_id": self.service.id, "error": repr(exc)},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, GET_RETRY_MAX_S)

    def _own(self, task: asyncio.Task[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def read_capped(resp: aiohttp.ClientResponse, limit: int, service_id: str) -> bytes:
    """The whole body, or UpstreamError naming the limit as soon as it is passed (a declared
    ``Content-Length`` over it is refused before reading)."""
    too_large = UpstreamError(
        f"mcp service {service_id} answered a JSON body over the {limit // (1 << 20)} MiB limit"
    )
    if (resp.content_length or 0) > limit:
        raise too_large
    parts: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_any():
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


def _meta_server_info(found: JsonObj) -> Any:
    meta = found.get("_meta")
    return meta.get("io.modelcontextprotocol/serverInfo") if isinstance(meta, dict) else None


def _ok(msg_id: RequestId) -> JsonObj:
    return {"jsonrpc": "2.0", "id": msg_id, "result": {}}


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
