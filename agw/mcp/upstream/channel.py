"""The channel base of the upstreams that keep one long-lived duplex message channel: stdio
(a process's stdin/stdout) and legacy HTTP+SSE (a GET stream plus POSTs).

:class:`ChannelUpstream` is an MCP client over such a channel: it numbers its requests (1, 2,
...), keeps the calls in flight by id, and a reader task hands every message the server sends to
:meth:`ChannelUpstream._receive`, which resolves calls and routes the rest:

- ``notifications/progress`` goes to the call whose progress token it carries. The caller's token
  is replaced upstream by the upstream request id (several clients share a stdio process and may
  pick the same token) and put back before ``on_message`` sees the notification.
- list / resource change notifications go to the ``listener`` (they belong to no call).
- any other notification or server->client request goes to the one call in flight, if exactly
  one is; otherwise to the ``listener``. A request nobody takes is answered with -32601; a
  ``ping`` is answered here.

``on_message`` is awaited by the reader, so messages keep their order (progress before the
result), and must therefore never wait for this upstream's answers; the listener runs in its
own task.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from abc import abstractmethod
from collections.abc import Coroutine
from typing import Any

from agw.clock import now_ms
from agw.config.mcp import McpService
from agw.mcp.jsonrpc import (
    RequestId,
    RpcError,
    is_request,
    is_response,
    notification,
    request,
    result,
)
from agw.mcp.upstream.base import (
    DEFAULT_CALL_TIMEOUT_S,
    HANDSHAKE_TIMEOUT_S,
    Listener,
    OnMessage,
    Upstream,
    UpstreamError,
    error_response,
    initialize_params,
    ready_within,
    refusal,
    retrieve,
)
from agw.types import JsonObj

log = logging.getLogger(__name__)

# Notifications about the server's state, never about one call.
LISTENER_ONLY = frozenset(
    {
        "notifications/tools/list_changed",
        "notifications/prompts/list_changed",
        "notifications/resources/list_changed",
        "notifications/resources/updated",
    }
)


def progress_token(params: JsonObj | None) -> str | int | None:
    meta = params.get("_meta") if params else None
    token = meta.get("progressToken") if isinstance(meta, dict) else None
    if isinstance(token, str | int) and not isinstance(token, bool):
        return token
    return None


class _Call:
    __slots__ = ("future", "method", "on_message", "token")

    def __init__(
        self, method: str, future: asyncio.Future[Any], on_message: OnMessage | None
    ) -> None:
        self.method = method
        self.future = future
        self.on_message = on_message
        self.token: str | int | None = None  # the caller's own progress token


class ChannelUpstream(Upstream):
    """An MCP client session over one duplex message channel (see the module docstring)."""

    def __init__(self, service: McpService, listener: Listener | None = None) -> None:
        super().__init__(service, listener)
        self.created_at_ms = now_ms()
        self._ids = itertools.count(1)
        self._calls: dict[RequestId, _Call] = {}
        self._handshake: asyncio.Task[JsonObj] | None = None
        self._connected = False
        self._closed = False
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------ what a channel provides

    @abstractmethod
    async def _open(self) -> None:
        """Open the channel, set ``_connected`` and start its reader (which calls ``_receive``
        and, when the channel ends, ``_lost``). Raises UpstreamError."""

    @abstractmethod
    async def _send(self, msg: JsonObj) -> None:
        """Write one message. Raises UpstreamError."""

    @abstractmethod
    async def _abort(self, reason: str) -> None:
        """Tear the channel down at once (a failed handshake); the next call opens it again."""

    @abstractmethod
    async def _shutdown(self) -> None:
        """Tear the channel down for good (``close``)."""

    # ------------------------------------------------------------------------------ Upstream

    async def ensure_ready(self) -> JsonObj:
        if self.state == "ready" and self.init_result is not None and self._connected:
            return self.init_result
        if self._closed:
            raise UpstreamError(f"mcp service {self.service.id} is closed")
        task = self._handshake
        if task is None or task.done():
            task = self._handshake = asyncio.create_task(self._do_handshake())
            task.add_done_callback(retrieve)
        return await asyncio.shield(task)

    async def _do_handshake(self) -> JsonObj:
        self.state = "connecting"
        try:
            await self._open()
            answer = await self._call("initialize", initialize_params(), None, HANDSHAKE_TIMEOUT_S)
            if not isinstance(answer, dict):
                raise UpstreamError(
                    f"mcp service {self.service.id} answered initialize with {answer!r}"[:300]
                )
            await self._send(notification("notifications/initialized"))
        except BaseException as exc:
            reason = str(exc) if isinstance(exc, UpstreamError | RpcError) else repr(exc)
            self.state = "error" if not self._closed else "closed"
            self.last_error = reason
            self._connected = False
            await self._abort(reason)
            raise
        self.init_result = answer
        version = answer.get("protocolVersion")
        self.protocol_version = version if isinstance(version, str) else None
        self.state = "ready"
        self.last_error = None
        log.info(
            "mcp_upstream_ready",
            extra={"service_id": self.service.id, "protocol_version": self.protocol_version},
        )
        return answer

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
        return await self._call(method, params, on_message, timeout)

    async def notify(self, method: str, params: JsonObj | None = None) -> None:
        await self.ensure_ready()
        await self._send(notification(method, params))

    async def reply(
        self, request_id: RequestId, result: Any = None, error: JsonObj | None = None
    ) -> None:
        if not self._connected:
            log.info(
                "mcp_reply_dropped",
                extra={"service_id": self.service.id, "reason": "not connected"},
            )
            return
        msg = (
            error_response(request_id, error) if error is not None else _result(request_id, result)
        )
        await self._send(msg)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.state = "closed"
        self._fail_all(UpstreamError(f"mcp service {self.service.id} closed"))
        if self._handshake is not None and not self._handshake.done():
            self._handshake.cancel()
            with contextlib.suppress(BaseException):
                await self._handshake
        try:
            await self._shutdown()
        finally:
            self._connected = False
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------------------ calls

    async def _call(
        self,
        method: str,
        params: JsonObj | None,
        on_message: OnMessage | None,
        timeout: float | None,  # noqa: ASYNC109
    ) -> Any:
        call_id = next(self._ids)
        call = _Call(method, asyncio.get_running_loop().create_future(), on_message)
        token = progress_token(params)
        if params is not None and token is not None:
            call.token = token
            params = {**params, "_meta": {**params["_meta"], "progressToken": call_id}}
        self._calls[call_id] = call
        try:
            await self._send(request(call_id, method, params))
            async with asyncio.timeout(timeout):
                return await call.future
        except TimeoutError:
            self._cancel_upstream(call_id, "timed out")
            raise UpstreamError(
                f"mcp service {self.service.id} did not answer {method} within {timeout:g}s"
            ) from None
        except asyncio.CancelledError:
            if self._connected and not self._closed:
                self._cancel_upstream(call_id, "cancelled by the client")
            raise
        finally:
            del self._calls[call_id]

    def _cancel_upstream(self, call_id: int, reason: str) -> None:
        msg = notification("notifications/cancelled", {"requestId": call_id, "reason": reason})
        self._spawn(self._send_quietly(msg))

    async def _send_quietly(self, msg: JsonObj) -> None:
        try:
            await self._send(msg)
        except UpstreamError as exc:
            log.info("mcp_send_failed", extra={"service_id": self.service.id, "error": str(exc)})

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail_all(self, exc: UpstreamError) -> None:
        for call in self._calls.values():
            if not call.future.done():
                call.future.set_exception(exc)
                call.future.exception()  # a handshake nobody awaits must not warn

    def _lost(self, reason: str) -> None:
        """The channel ended (reader): every call in flight fails now."""
        self._connected = False
        if not self._closed:
            self.state = "error"
            self.last_error = reason
        self._fail_all(UpstreamError(reason))

    # ------------------------------------------------------------------------------ incoming

    async def _receive(self, msg: Any) -> None:
        if not isinstance(msg, dict):
            log.info(
                "mcp_message_dropped",
                extra={"service_id": self.service.id, "reason": "not an object"},
            )
            return
        if is_response(msg):
            call = self._calls.get(msg["id"])
            if call is None:
                log.info(
                    "mcp_unknown_response_dropped",
                    extra={"service_id": self.service.id, "id": str(msg["id"])[:64]},
                )
            elif not call.future.done():
                if "error" in msg:
                    call.future.set_exception(RpcError.from_obj(msg["error"]))
                else:
                    call.future.set_result(msg.get("result"))
            return
        method = msg.get("method")
        if not isinstance(method, str):
            log.info(
                "mcp_message_dropped", extra={"service_id": self.service.id, "reason": "no method"}
            )
            return
        if method == "ping" and is_request(msg):
            await self._send_quietly(_result(msg["id"], {}))
            return
        await self._route(msg, method)

    async def _route(self, msg: JsonObj, method: str) -> None:
        params = msg.get("params")
        call: _Call | None = None
        if method == "notifications/progress" and isinstance(params, dict):
            upstream_token = params.get("progressToken")
            call = self._calls.get(upstream_token) if isinstance(upstream_token, int) else None
            if call is None or call.token is None:
                call = None
            else:
                msg = {**msg, "params": {**params, "progressToken": call.token}}
        elif method not in LISTENER_ONLY:
            active = [c for c in self._calls.values() if c.method != "initialize"]
            if len(active) == 1:
                call = active[0]
        if call is not None and call.on_message is not None:
            try:
                await call.on_message(msg)
            except Exception as exc:
                log.warning(
                    "mcp_on_message_failed",
                    extra={"service_id": self.service.id, "method": method, "error": repr(exc)},
                )
                if is_request(msg):
                    await self._send_quietly(refusal(msg))
            return
        if call is not None and method == "notifications/progress":
            return  # the call's own progress, and its caller did not ask for messages
        self._spawn(self._to_listener(msg))

    async def _to_listener(self, msg: JsonObj) -> None:
        if self.listener is None:
            if is_request(msg):
                await self._send_quietly(refusal(msg))
            return
        try:
            await self.listener(self, msg)
        except Exception as exc:
            log.warning(
                "mcp_listener_failed",
                extra={
                    "service_id": self.service.id,
                    "method": msg.get("method"),
                    "error": repr(exc),
                },
            )
            if is_request(msg):
                await self._send_quietly(refusal(msg))


def _result(msg_id: RequestId, value: Any) -> JsonObj:
    return result(msg_id, value)
