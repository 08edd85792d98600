"""The MCP plane: step 4 of the request pipeline for ``mcp`` routes (agw.dataplane.Plane).

Per request: the dispatcher's refusal, if any, rendered as a JSON-RPC error -> the path and
method (agw.mcp.ingress: the HTTP rules of both eras and the legacy transport) -> the POST's
:class:`~agw.mcp.exchange.Exchange`, whose requests run against the server's methods
(agw.mcp.server) -> one usage event per JSON-RPC request (per refused request, too). What the
upstreams send that is no answer goes through the relay (agw.mcp.relay); the live state
(sessions, upstreams, calls in flight) is the :class:`~agw.mcp.state.McpState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from agw.errors import PayloadTooLarge, Refusal
from agw.mcp import jsonrpc as rpc
from agw.mcp.exchange import Call, Exchange
from agw.mcp.ingress import BODY_LIMIT, Ingress, not_allowed, peek
from agw.mcp.jsonrpc import RequestId, RpcError, encode
from agw.mcp.limits import answer_headers, tool_price
from agw.mcp.relay import Relay
from agw.mcp.server import McpServer
from agw.mcp.state import McpState
from agw.policy.limits import Limiter
from agw.request import ClientGone, Request
from agw.types import Headers, JsonObj
from agw.usage.events import McpUsageEvent
from agw.usage.recorder import UsageRecorder

log = logging.getLogger(__name__)

INTERNAL = "internal gateway error"


class McpPlane:
    """The data plane's handler of ``mcp`` routes."""

    edge_always = True  # a browser may hold an MCP session

    def __init__(
        self,
        recorder: UsageRecorder | None,
        state: McpState,
        *,
        limiter: Limiter | None = None,
    ) -> None:
        """Sessions are attributed by the dispatcher (``req.session_id``, ``req.acp_session_id``)
        before the plane runs. ``limiter``: the gateway's limit counters (default: its own)."""
        self.state = state
        self.recorder = recorder
        self.relay = Relay(state)
        self.server = McpServer(state, self.relay, limiter)
        self.ingress = Ingress(state, self.server.handshake_methods, self.server.modern_methods)
        state.bind(self.relay.upstream_message)

    async def close(self) -> None:
        await self.state.close()

    # --------------------------------------------------------------------------------- entry

    async def handle(self, req: Request, refusal: Refusal | None) -> None:
        # the usage row of this request when it is refused, or of its first JSON-RPC request
        call = Call()
        record = True
        try:
            if refusal is not None:
                if req.method == "POST":
                    with contextlib.suppress(PayloadTooLarge, ClientGone):
                        call.method, call.request_id = peek(await req.read_body(BODY_LIMIT))
                raise refusal
            path, method = req.path, req.method
            ingress = self.ingress
            if path == "/sse":
                if method != "GET":
                    raise not_allowed("GET")
                record = False
                await ingress.legacy_stream(req, call)
            elif path.startswith("/message"):
                if method != "POST":
                    raise not_allowed("POST")
                ex = await ingress.legacy_post(req, call)
                record = False
                await req.respond(202, b"Accepted", b"text/plain")
                ex.session.own_task(asyncio.create_task(self._legacy(ex, call)))
            elif method == "POST":
                ex = await ingress.post(req, call)
                record = False
                for done in await self._answer(ex, call):
                    self.record(req, done)
            elif method == "GET":
                record = False
                await ingress.get(req)
            elif method == "DELETE":
                record = False
                await ingress.delete(req)
            else:
                raise not_allowed("GET, POST, DELETE")
        except Refusal as exc:
            record = True
            detail = exc.detail
            call.fail(detail if isinstance(detail, RpcError) else _invalid(exc), exc.code)
            call.status_code = exc.status
            if not req.started:
                await self.render(req, exc, call.msg_id)
        except ClientGone:
            record = False  # the client left before its request was read: nothing ran
        except Exception:
            log.exception("mcp_request_failed", extra={"route_id": req.route.id})
            call, record = Call(), True
            call.fail(RpcError(rpc.INTERNAL_ERROR, INTERNAL), "internal_error")
            call.status_code = 500
            if not req.started:
                await req.respond(
                    500, encode(rpc.error(None, RpcError(rpc.INTERNAL_ERROR, INTERNAL)))
                )
        if record:
            self.record(req, call)

    @staticmethod
    async def render(req: Request, refusal: Refusal, msg_id: RequestId | None = None) -> None:
        """A refusal as MCP answers it: its status, a JSON-RPC error (the refusal's ``detail``
        when that is one, else -32600 with its message), and ``WWW-Authenticate: Bearer`` on
        401."""
        detail = refusal.detail
        error = detail if isinstance(detail, RpcError) else _invalid(refusal)
        headers = refusal.answer_headers()
        if refusal.status == 401 and not any(n == b"www-authenticate" for n, _ in headers):
            headers = [(b"www-authenticate", b"Bearer"), *headers]
        await req.respond(
            refusal.status,
            encode(rpc.error(msg_id, error)),
            headers=headers + req.close_if_unread(),
        )

    # ------------------------------------------------------------------------------ answers

    async def _answer(self, ex: Exchange, first: Call) -> list[Call]:
        """Run an exchange's messages and send its answer; the usage rows of its requests
        (``first`` is the first one's)."""
        req, session = ex.req, ex.session
        messages = ex.messages
        if ex.opens:
            return [await self._initialize(ex, messages[0], first)]
        session.touch()
        if len(messages) == 1 and rpc.is_request(messages[0]):  # most POSTs: one request
            first.session = None if session.modern else session.short
            if not ex.legacy:
                ex.watch()
            try:
                answer = await ex.call(messages[0], first)
            finally:
                ex.unwatch()
            headers = _limit_headers(req, [first])
            if answer is not None:
                await ex.finish([answer], batch=False, cancelled=[], headers=headers)
            else:
                await ex.finish([], batch=False, cancelled=[_client_cancelled(messages[0])])
            first.status_code = self._status(ex)
            return [first]
        for msg in messages:
            if rpc.is_response(msg):
                await self.relay.response(ex, msg)
            elif rpc.is_notification(msg):
                await self.relay.notification(ex, msg)
        requests = [m for m in messages if rpc.is_request(m)]
        if not requests:
            if not ex.legacy:
                await req.respond(202, b"")
            return []
        handle = None if session.modern else session.short
        first.session = handle
        calls = [first, *(Call(session=handle) for _ in requests[1:])]
        if not ex.legacy:
            ex.watch()
        try:
            answers = await ex.call_all(requests, calls)
        finally:
            ex.unwatch()
        responses = [a for a in answers if a is not None]
        cancelled = [
            _client_cancelled(m) for m, a in zip(requests, answers, strict=True) if a is None
        ]
        await ex.finish(
            responses, batch=ex.batch, cancelled=cancelled, headers=_limit_headers(req, calls)
        )
        status = self._status(ex)
        for call in calls:
            call.status_code = status
        return calls

    @staticmethod
    def _status(ex: Exchange) -> int:
        if ex.gone:  # as the LLM plane records a client that left mid-answer
            return 499
        return 202 if ex.legacy else (ex.req.status or 200)

    async def _initialize(self, ex: Exchange, msg: JsonObj, call: Call) -> Call:
        session = ex.session
        call.session = session.short
        response = await ex.call(msg, call)
        if response is not None and "result" in response:
            self.state.seal(session)  # any replica can serve it from now on
            call.session = session.short
            headers = [(b"mcp-session-id", session.key.encode())]
        else:
            headers = []
            await self.state.end_session(session)
        await ex.finish([response] if response else [], batch=False, cancelled=[], headers=headers)
        call.status_code = ex.req.status
        return call

    async def _legacy(self, ex: Exchange, first: Call) -> None:
        """A legacy message POST, after its 202: the answers go to the session's stream."""
        try:
            for call in await self._answer(ex, first):
                self.record(ex.req, call)
        except Exception:
            log.exception("mcp_request_failed", extra={"route_id": ex.req.route.id})

    # -------------------------------------------------------------------------------- usage

    def record(self, req: Request, call: Call) -> None:
        if self.recorder is None:
            return
        status = call.status_code or req.status or 500
        head = req.usage_head(call.started_ms, status, call.error_type)
        if not head["session_id"]:  # the dispatcher's attribution first, then the request's
            head["session_id"] = call.agent_session
        if call.limit_action is not None:  # each call of a batch its own (agw.mcp.limits)
            head["limit_id"], head["limit_action"] = call.limit_id, call.limit_action
        self.recorder.emit(
            McpUsageEvent(
                **head,
                request_id=call.request_id,
                service_id=call.service_id,
                method=call.method,
                tool_name=call.tool_name,
                presented_tool_name=call.tool_name,
                executed_tool_name=call.executed_tool_name,
                policy_action=call.policy_action,
                resource_uri=call.resource_uri,
                prompt_name=call.prompt_name,
                completion_ref_type=call.completion_ref_type,
                completion_argument=call.completion_argument,
                arg_count=call.arg_count,
                result_status=call.result_status or ("error" if call.error_type else "success"),
                cancelled=call.cancelled,
                tool_args_json=call.tool_args,
                mcp_session_id=call.session,
                acp_session_id=req.acp_session_id,
                overhead_ms=call.overhead_ms(),
                cost_usd=_cost(req, call),
            )
        )


def _cost(req: Request, call: Call) -> float | None:
    """USD of a ``tools/call`` its service answered: the service's ``tool_prices`` entry for
    the upstream tool, else its ``price_per_call``; None when unpriced or not answered."""
    tool = call.executed_tool_name
    if tool is None or call.error_type is not None or call.method != "tools/call":
        return None
    return tool_price(req.snapshot.mcp_services.get(call.service_id or ""), tool)


def _limit_headers(req: Request, calls: list[Call]) -> Headers | None:
    """A refused call's ``Retry-After`` and ``RateLimit`` headers for a plain JSON answer, in
    place of the admitted calls' (``req.limit_headers``, which every answer carries)."""
    headers = answer_headers(calls)
    if headers is not None:
        req.limit_headers, req.limit_head = None, b""
    return headers


def _invalid(refusal: Refusal) -> RpcError:
    """The JSON-RPC error of a refusal that names none (the dispatcher's)."""
    return RpcError(rpc.INVALID_REQUEST, refusal.message)


def _client_cancelled(msg: JsonObj) -> JsonObj:
    return rpc.error(msg["id"], RpcError(rpc.REQUEST_CANCELLED, "request cancelled"))
