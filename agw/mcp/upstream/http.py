"""The streamable HTTP upstream (agw.mcp.httpclient): one upstream MCP session, both eras.

Handshake era (tried first): POST ``initialize`` (no session, no version header), keep the
``Mcp-Session-Id`` it answers with, POST ``notifications/initialized``, then send
``Mcp-Session-Id`` and ``MCP-Protocol-Version`` on every request. A request whose session the
server no longer knows (HTTP 404 while a session id was sent) re-initialises once and is sent again.
A standalone GET SSE stream is opened after the handshake (none if the server answers 405); what
arrives there goes to the ``listener``. :meth:`StreamableHttpUpstream.adopt` continues a session
another gateway replica opened, without a handshake.

Modern era (2026-07-28): when ``initialize`` gets an HTTP 4xx or a JSON-RPC error, the upstream
tries ``server/discover``; if that answers, every request carries ``MCP-Protocol-Version:
2026-07-28``, ``Mcp-Method`` (and ``Mcp-Name`` for ``tools/call``, ``resources/read``,
``prompts/get``) and the reserved ``_meta`` keys, and ``init_result`` is the discover result in the
shape of an initialize result. Cancelling a call closes its response stream (handshake era: also
POSTs ``notifications/cancelled`` with the upstream request id).

What goes over the wire (the POSTs and their JSON or SSE answers, each era's headers, the GET
stream) is :class:`agw.mcp.upstream.http_wire.HttpWire`'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Coroutine
from typing import Any

from agw.clock import now_ms
from agw.config.mcp import McpService
from agw.mcp.httpclient import HttpClientError
from agw.mcp.jsonrpc import RequestId, RpcError, notification
from agw.mcp.jsonrpc import request as rpc_request
from agw.mcp.protocol import META_SERVER_INFO, MODERN_PROTOCOL_VERSION
from agw.mcp.upstream.base import (
    DEFAULT_CALL_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    Listener,
    OnMessage,
    UpstreamError,
    error_response,
    initialize_params,
    ready_within,
    retrieve,
)
from agw.mcp.upstream.http_wire import HttpWire, SessionExpired
from agw.types import JsonObj

log = logging.getLogger(__name__)

CLOSE_TIMEOUT_S = 5.0


def unpack(answer: JsonObj) -> Any:
    """The ``result`` of a response message, or its error raised as RpcError."""
    if "error" in answer:
        raise RpcError.from_obj(answer["error"])
    return answer.get("result")


class StreamableHttpUpstream(HttpWire):
    """One MCP session with a streamable HTTP server (see the module docstring)."""

    def __init__(self, service: McpService, listener: Listener | None = None) -> None:
        super().__init__(service, listener)
        self.created_at_ms = now_ms()
        self._ids = itertools.count(1)
        self._handshake: asyncio.Task[JsonObj] | None = None
        self._listen_task: asyncio.Task[None] | None = None

    def adopt(self, session_id: str, protocol_version: str | None, capabilities: JsonObj) -> None:
        """Continue an upstream session another replica opened (agw.mcp.session_id): ready at
        once, bound to ``session_id``, its GET stream opened. Should the server no longer know
        it (HTTP 404), the next request initializes a fresh one, as for any expired session."""
        self.session_id = session_id
        self.protocol_version = protocol_version
        self.init_result = {"protocolVersion": protocol_version, "capabilities": capabilities}
        self.state = "ready"
        self._listen_task = asyncio.create_task(self._listen(self._generation))

    # ------------------------------------------------------------------------------ Upstream

    async def ensure_ready(self) -> JsonObj:
        if self.state == "ready" and self.init_result is not None:
            return self.init_result
        if self._closed:
            raise UpstreamError(f"mcp service {self.service.id} is closed")
        task = self._handshake
        if task is None or task.done():
            task = self._handshake = asyncio.create_task(self._do_handshake())
            task.add_done_callback(retrieve)
        return await asyncio.shield(task)

    async def request(
        self,
        method: str,
        params: JsonObj | None = None,
        *,
        on_message: OnMessage | None = None,
        timeout: float | None = DEFAULT_CALL_TIMEOUT_S,  # noqa: ASYNC109
    ) -> Any:
        if self.state != "ready":
            await ready_within(self, timeout)
        self.last_used_at_ms = now_ms()
        for attempt in range(2):
            generation = self._generation
            try:
                return unpack(await self._exchange(method, params, on_message, timeout))
            except SessionExpired:
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
                with contextlib.suppress(HttpClientError, TimeoutError):
                    async with asyncio.timeout(CLOSE_TIMEOUT_S):
                        headers = self._headers(None, None)
                        headers.pop("content-type")
                        resp = await http.request("DELETE", headers)
                        resp.close()
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


def _meta_server_info(found: JsonObj) -> Any:
    meta = found.get("_meta")
    return meta.get(META_SERVER_INFO) if isinstance(meta, dict) else None
