"""One POST to an MCP route: its answer, and the JSON-RPC requests it carries.

:class:`Exchange` answers the POST with JSON, or with an SSE stream once a message (progress,
logging, a relayed request) must reach the client before the answer; a legacy (HTTP+SSE)
exchange writes everything to the session's stream instead. :meth:`Exchange.call` runs one
request in the task that serves the POST (no task of its own): a cancellation (the client's
``notifications/cancelled``, a disconnect, the session's end, the admin API) cancels that task,
and the request answers ``-32000`` (or nothing, when the client cancelled it itself). Several
requests (a batch) run in a task each. A :class:`Call` per request is its usage row.

The disconnect of a streamable client is watched only once the calls have run for
``WATCH_AFTER_S`` (agw.request): most calls are done sooner and never pay for a watcher task.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agw.clock import now_ms
from agw.mcp import jsonrpc as rpc
from agw.mcp.inflight import InFlight, Registry
from agw.mcp.jsonrpc import RequestId, RpcError, encode
from agw.mcp.mux import LIST_KINDS
from agw.mcp.protocol import META_SERVER_INFO, SERVER_INFO
from agw.mcp.sessions import DownstreamSession, sse_message
from agw.request import WATCH_AFTER_S, Request
from agw.runtime.attribution import SESSION_ID_MAX
from agw.types import Headers, JsonObj

if TYPE_CHECKING:
    from agw.errors import Refusal
    from agw.policy.limits import Admission

log = logging.getLogger(__name__)

SSE_HEADERS: Headers = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


@dataclass(slots=True)
class Call:
    """The usage of one client JSON-RPC request (one ``mcp_usage_events`` row)."""

    started_ms: int = field(default_factory=now_ms)
    t0: int = field(default_factory=time.perf_counter_ns)
    # the span from the first upstream request's start to the last one's end (fan-outs run in
    # parallel): what the call waited on MCP servers; the rest of its time is the gateway's
    upstream_from_ns: int = 0
    upstream_to_ns: int = 0
    session: str | None = None  # the downstream session's handle (DownstreamSession.short)
    agent_session: str | None = None  # params._meta["agent-session-id"]
    request_id: str | None = None
    msg_id: RequestId | None = None  # the id a refusal's JSON-RPC error answers (agw.mcp.plane)
    method: str | None = None
    service_id: str | None = None
    tool_name: str | None = None
    executed_tool_name: str | None = None
    policy_action: str | None = None
    resource_uri: str | None = None
    prompt_name: str | None = None
    completion_ref_type: str | None = None
    completion_argument: str | None = None
    arg_count: int | None = None
    result_status: str | None = None
    cancelled: bool = False
    tool_args: JsonObj | None = None
    status_code: int | None = None
    error_type: str | None = None
    error: str | None = None
    # limits (agw.mcp.limits): this call's hold on its counters while it runs, what it costs,
    # the refusal whose headers its answer carries, and what a limit did to it (its row's)
    admission: Admission | None = None
    limit_price: float = 0.0
    limit_refusal: Refusal | None = None
    limit_id: str | None = None
    limit_action: str | None = None

    def waited(self, since_ns: int) -> None:
        """An upstream request that started at ``since_ns`` has just ended."""
        if not self.upstream_from_ns or since_ns < self.upstream_from_ns:
            self.upstream_from_ns = since_ns
        self.upstream_to_ns = time.perf_counter_ns()

    def overhead_ms(self) -> float:
        total = time.perf_counter_ns() - self.t0
        return max(0, total - (self.upstream_to_ns - self.upstream_from_ns)) / 1e6

    def fail(self, exc: RpcError, error_type: str | None = None) -> None:
        self.result_status = "cancelled" if self.cancelled else "error"
        self.error = exc.message
        if self.error_type is None:
            self.error_type = error_type or _ERROR_TYPES.get(exc.code, "request_failed")


_ERROR_TYPES = {
    rpc.PARSE_ERROR: "protocol_validation_failed",
    rpc.INVALID_REQUEST: "protocol_validation_failed",
    rpc.METHOD_NOT_FOUND: "method_not_found",
    rpc.INVALID_PARAMS: "invalid_params",
    rpc.INTERNAL_ERROR: "internal_error",
    rpc.UPSTREAM_FAILED: "upstream_failed",
    rpc.RESOURCE_NOT_FOUND: "resource_not_found",
    rpc.FORBIDDEN: "forbidden",
    rpc.RATE_LIMITED: "rate_limited",
    rpc.HEADER_MISMATCH: "protocol_validation_failed",
    rpc.UNSUPPORTED_PROTOCOL_VERSION: "protocol_validation_failed",
}

# A method of the server (agw.mcp.server): the request's params, its usage row and its
# in-flight entry in; its result out (RpcError for an error answer).
Method = Callable[["Exchange", JsonObj, Call, InFlight], Awaitable[Any]]


def modern_result(method: str, result: Any) -> Any:
    """A result as the 2026-07-28 era answers it: ``resultType``, cache hints on lists and
    ``server/discover``, and the gateway's server info in ``_meta``."""
    if not isinstance(result, dict):
        return result
    out = dict(result)
    out.setdefault("resultType", "complete")
    if method in LIST_KINDS or method == "server/discover":
        out.setdefault("ttlMs", 0)
        out.setdefault("cacheScope", "private")
    meta = out.get("_meta")
    out["_meta"] = {**(meta if isinstance(meta, dict) else {}), META_SERVER_INFO: SERVER_INFO}
    return out


class Exchange:
    """The answer to one POST and the requests it carries (see the module docstring)."""

    __slots__ = (
        "_lock",
        "_timer",
        "_watcher",
        "batch",
        "entries",
        "finished",
        "gone",
        "legacy",
        "messages",
        "methods",
        "opens",
        "registry",
        "req",
        "session",
        "sse_ok",
        "streaming",
    )

    def __init__(
        self,
        req: Request,
        session: DownstreamSession,
        registry: Registry,
        methods: Mapping[str, Method],
        messages: list[JsonObj],
        *,
        batch: bool = False,
        sse_ok: bool,
        legacy: bool = False,
        opens: bool = False,
    ) -> None:
        self.req = req
        self.session = session
        self.registry = registry
        self.methods = methods  # the server's methods of the session's era
        self.messages = messages  # what the POST carries (checked JSON-RPC messages)
        self.batch = batch  # they came as a JSON array: the answer is one too
        self.opens = opens  # an ``initialize`` that opens its session (only message)
        self.sse_ok = sse_ok and not legacy
        self.legacy = legacy
        self.streaming = False
        self.finished = False
        self.gone = False  # the client disconnected while the calls ran
        self.entries: list[InFlight] = []  # this POST's calls, for the disconnect watch
        self._lock: asyncio.Lock | None = None  # taken once the answer is a stream
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------- calls

    async def call(self, msg: JsonObj, call: Call) -> JsonObj | None:
        """Run one request in the current task; its response message, or None when the client
        cancelled it (it gets no answer)."""
        msg_id = msg["id"]
        method: str = msg["method"]
        rid = str(msg_id)
        call.request_id, call.method = rid, method
        params = msg.get("params")
        token = None
        if params is None:
            params = {}
        else:
            meta = params.get("_meta")
            if isinstance(meta, dict):
                token = meta.get("progressToken")
                named = meta.get("agent-session-id")
                if isinstance(named, str) and named:
                    call.agent_session = named[:SESSION_ID_MAX]
        session = self.session
        modern = session.modern
        registry = self.registry
        entry = registry.begin(self.req.route.id, session.short, modern, rid, method, token)
        if not modern:
            session.inflight[rid] = entry
        self.entries.append(entry)
        task = asyncio.current_task()
        assert task is not None
        base = task.cancelling()
        entry.task = task
        answer: JsonObj | None
        try:
            fn = self.methods.get(method)
            if fn is None:
                raise RpcError(rpc.METHOD_NOT_FOUND, f"Method not found: {method}")
            result = await fn(self, params, call, entry)
            if modern:
                result = modern_result(method, result)
            answer = {"jsonrpc": "2.0", "id": msg_id, "result": result}
        except RpcError as exc:
            call.fail(exc)
            answer = rpc.error(msg_id, exc)
        except asyncio.CancelledError:
            # ours (entry.cancel) unless nobody cancelled the entry, or someone else also
            # cancelled the task (the gateway stopping): then it goes on up
            if entry.cancelled_at is None or task.uncancel() > base:
                raise
            answer = self._cancelled(entry, msg_id, method, call)
        except Exception:
            log.exception("mcp_request_failed", extra={"route_id": self.req.route.id})
            internal = RpcError(rpc.INTERNAL_ERROR, "internal gateway error")
            call.fail(internal, "internal_error")
            answer = rpc.error(msg_id, internal)
        finally:
            registry.end(entry, call.error)
            if not modern and session.inflight.get(rid) is entry:
                del session.inflight[rid]
        if entry.cancelled_at is not None and not call.cancelled and task.cancelling() > base:
            task.uncancel()  # cancelled as it finished: the answer stands, the request is over
        if call.result_status is None:
            call.result_status = "success"
        return answer

    @staticmethod
    def _cancelled(entry: InFlight, msg_id: RequestId, method: str, call: Call) -> JsonObj | None:
        call.cancelled = True
        reason = entry.cancel_reason or "cancelled"
        by_client = reason.startswith("client")
        call.fail(
            RpcError(rpc.REQUEST_CANCELLED, f"request cancelled: {reason}"),
            "client_cancelled" if by_client else "cancelled",
        )
        if by_client:
            return None
        return rpc.error(
            msg_id,
            RpcError(
                rpc.REQUEST_CANCELLED,
                f"request cancelled: {reason}",
                {"cancelled": True, "method": method},
            ),
        )

    async def call_all(self, requests: list[JsonObj], calls: list[Call]) -> list[JsonObj | None]:
        """Several requests (a batch), each in its own task, concurrently."""
        if len(requests) == 1:
            return [await self.call(requests[0], calls[0])]
        return list(
            await asyncio.gather(*(self.call(m, c) for m, c in zip(requests, calls, strict=True)))
        )

    # ---------------------------------------------------------------------- the client leaves

    def watch(self) -> None:
        """From ``WATCH_AFTER_S`` on, a client that disconnects cancels this POST's calls."""
        self._timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start_watch)

    def _start_watch(self) -> None:
        self._timer = None
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        await self.req.watch_disconnect()
        self.gone = True
        for entry in self.entries:
            entry.cancel("client disconnected")

    def unwatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None

    # ---------------------------------------------------------------------------- delivery

    def can_deliver(self) -> bool:
        """A message to the client would reach it (its SSE answer or a standalone stream)."""
        return (self.sse_ok and not self.finished) or self.session.stream is not None

    async def emit(self, msg: JsonObj) -> bool:
        """A message during a call: on this answer's SSE stream when the client takes SSE, else
        on the session's standalone stream; False when it had nowhere to go (dropped)."""
        if self.sse_ok and not self.finished:
            if self._lock is None:
                self._lock = asyncio.Lock()
            async with self._lock:
                if not self.finished:
                    if not self.streaming:
                        self.streaming = True
                        await self.req.start(200, list(SSE_HEADERS))
                    await self._send(sse_message(msg), more=True)
                    return True
        return self.session.push(msg)

    async def _send(self, data: bytes, *, more: bool) -> None:
        with contextlib.suppress(Exception):  # a client gone mid-stream: nothing to tell it
            await self.req.body(data, more)

    async def finish(
        self,
        responses: list[JsonObj],
        *,
        batch: bool,
        cancelled: list[JsonObj],
        headers: Headers | None = None,
    ) -> None:
        """Send the answers. ``cancelled``: the error answers of requests the client cancelled
        itself, sent only where an empty answer is impossible (a JSON-only client)."""
        self.finished = True  # from now on, emit() goes to the standalone stream
        if self.legacy:
            for r in responses:
                self.session.push(r)
            return
        if self.streaming:
            assert self._lock is not None
            async with self._lock:  # after the message being written, if one is
                for r in responses:
                    await self._send(sse_message(r), more=True)
                await self._send(b"", more=False)
            return
        if not responses and self.sse_ok:
            await self.req.start(200, list(SSE_HEADERS))  # cancelled: an empty stream
            await self._send(b"", more=False)
            return
        out = responses or cancelled
        if not out:
            await self.req.respond(202, b"", headers=headers)
            return
        await self.req.respond(200, encode(out if batch else out[0]), headers=headers)
