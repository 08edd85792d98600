"""One A2A call relayed to the agent, and its answer back: a JSON answer whole (bounded), a
stream event by event (docs/a2a.md#streams).

The answer passes as it came (status, body, A2A headers), except: an agent card in it (the
extended card) is rewritten like the public one; a ``401``/``403`` (the agent refused the
*service's* credentials, which the caller cannot fix) becomes ``502 upstream_auth_failed``; a
redirect becomes ``502 upstream_failed`` (the client must not be sent around the gateway). A
stream the agent breaks, or one silent longer than the service's ``request_timeout``, ends
with an error event in the caller's binding. Each answer (each event) is read for the row: the
task id, context id and state it names, or its error.

A :class:`Dialect` is what differs between the bindings: how an answer is read for the row,
how an error is written, where a card sits in an answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

import aiohttp
import orjson

from agw import jsonfast
from agw.a2a import record
from agw.a2a.limits import RATE_LIMITED
from agw.a2a.protocol import INTERNAL_ERROR, rest_error, rest_error_type, rpc_error_body
from agw.a2a.record import Call
from agw.a2a.upstream import CONNECT_TIMEOUT_S, PASSED_BACK, Upstream, read_limited
from agw.config.a2a import A2aService
from agw.errors import Refusal
from agw.request import Request
from agw.sse import EVENT_LIMIT, Event, EventTooLarge, SSESplitter, frame
from agw.types import Headers, JsonObj

ANSWER_LIMIT: Final = 32 * 1024 * 1024  # one JSON answer of an agent
CardRewrite = Callable[[JsonObj], JsonObj]


class Dialect:
    """The HTTP+JSON binding's (the card's too): bodies are the objects themselves, errors
    ``{"error": {code, status, message, details}}``."""

    def error_body(self, status: int, message: str, error_type: str) -> bytes:
        return orjson.dumps(rest_error(status, message, error_type))

    def limit_body(self, message: str, detail: JsonObj) -> bytes:
        """A limit's 429 (agw.a2a.limits): the error object, the limit in its details."""
        body = rest_error(429, message, "rate_limited")
        body["error"]["details"].append({"@type": "agw.limit", **detail})
        return orjson.dumps(body)

    def read(self, call: Call, status: int, body: object) -> None:
        if status < 400:
            call.saw(body)
        else:
            call.fail(rest_error_type(body, status))

    def read_event(self, call: Call, event: Event, body: object) -> None:
        if event.name == "error":
            call.fail(rest_error_type(body, 500))
        else:
            call.saw(body)

    def stream_error(self, message: str) -> bytes:
        return frame(rest_error(502, message, record.UPSTREAM), "error")

    def with_card(self, body: JsonObj, rewrite: CardRewrite) -> JsonObj:
        return rewrite(body)


class RpcDialect(Dialect):
    """The JSON-RPC binding's: answers are envelopes of the request's ``id``."""

    def __init__(self, msg_id: object) -> None:
        self.msg_id = msg_id

    def error_body(self, status: int, message: str, error_type: str) -> bytes:
        return rpc_error_body(self.msg_id, INTERNAL_ERROR if status >= 500 else -32600, message)

    def limit_body(self, message: str, detail: JsonObj) -> bytes:
        error = {"code": RATE_LIMITED, "message": message, "data": detail}
        return orjson.dumps({"jsonrpc": "2.0", "id": self.msg_id, "error": error})

    def read(self, call: Call, status: int, body: object) -> None:
        if isinstance(body, dict) and ("result" in body or "error" in body):
            call.saw_rpc(body)
        elif status >= 400:
            call.fail("invalid_request" if status < 500 else "upstream_error")

    def read_event(self, call: Call, event: Event, body: object) -> None:
        call.saw_rpc(body)

    def stream_error(self, message: str) -> bytes:
        return frame(rpc_error_body(self.msg_id, INTERNAL_ERROR, message).decode())

    def with_card(self, body: JsonObj, rewrite: CardRewrite) -> JsonObj:
        result = body.get("result")
        return {**body, "result": rewrite(result)} if isinstance(result, dict) else body


def _timeout(service: A2aService, stream: bool) -> aiohttp.ClientTimeout:
    seconds = service.request_timeout / 1e9
    if stream:  # a stream may last: its longest silence is bounded instead
        return aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_read=seconds)
    return aiohttp.ClientTimeout(total=seconds, connect=CONNECT_TIMEOUT_S)


def _passed_back(resp: aiohttp.ClientResponse) -> Headers:
    return [
        (name.encode(), resp.headers[name].encode("latin-1"))
        for name in PASSED_BACK
        if name in resp.headers
    ]


async def relay(
    upstream: Upstream,
    req: Request,
    call: Call,
    dialect: Dialect,
    *,
    service: A2aService,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    card: CardRewrite | None,
) -> None:
    """Send the call to ``url`` and its answer to the client (see the module doc). Failures
    before the answer began are :class:`Refusal` s for the plane to render."""
    where = f'a2a service "{service.id}"'
    waited = time.perf_counter_ns()
    try:
        async with upstream.session().request(
            req.method,
            url,
            data=body,
            headers=headers,
            timeout=_timeout(service, call.stream),
            allow_redirects=False,
        ) as resp:
            call.upstream_ns += time.perf_counter_ns() - waited
            if resp.status in (401, 403):
                raise Refusal(
                    502,
                    record.AUTH,
                    f"the agent of {where} refused the gateway's credentials (HTTP {resp.status})",
                )
            if 300 <= resp.status < 400:
                raise Refusal(502, record.UPSTREAM, f"the agent of {where} answered a redirect")
            content_type = resp.headers.get("content-type", "")
            if call.stream and resp.status == 200 and content_type.startswith("text/event-stream"):
                await _stream(req, call, dialect, resp)
            else:
                await _answer(req, call, dialect, resp, card)
    except TimeoutError:
        if req.started:
            call.fail(record.TIMEOUT)
            return
        raise Refusal(504, record.TIMEOUT, f"the agent of {where} did not answer in time") from None
    except aiohttp.ClientError as exc:
        if req.started:
            call.fail(record.UPSTREAM)
            return
        raise Refusal(
            502,
            record.UPSTREAM,
            f"the agent of {where} could not be reached ({type(exc).__name__})",
        ) from None


async def _answer(
    req: Request,
    call: Call,
    dialect: Dialect,
    resp: aiohttp.ClientResponse,
    card: CardRewrite | None,
) -> None:
    waited = time.perf_counter_ns()
    raw = await read_limited(resp, ANSWER_LIMIT)
    call.upstream_ns += time.perf_counter_ns() - waited
    if raw is None:
        raise Refusal(
            502, record.UPSTREAM, f"the agent's answer is larger than {ANSWER_LIMIT} bytes"
        )
    parsed: object = None
    if raw[:1] in (b"{", b"["):
        try:
            parsed = jsonfast.loads(raw)
        except (ValueError, RecursionError):
            parsed = None
    dialect.read(call, resp.status, parsed)
    if card is not None and resp.status == 200 and isinstance(parsed, dict):
        raw = orjson.dumps(dialect.with_card(parsed, card))
    call.status = resp.status
    content_type = resp.headers.get("content-type", "application/json")
    await req.respond(resp.status, raw, content_type.encode("latin-1"), _passed_back(resp))


async def _stream(req: Request, call: Call, dialect: Dialect, resp: aiohttp.ClientResponse) -> None:
    """The agent's SSE stream to the client, one complete event at a time."""
    await req.start(
        200,
        [
            (b"content-type", b"text/event-stream"),
            (b"cache-control", b"no-cache"),
            *_passed_back(resp),
        ],
    )
    call.status = 200
    splitter = SSESplitter(EVENT_LIMIT)
    content = resp.content
    tail = b""
    try:
        while True:
            waited = time.perf_counter_ns()
            chunk = await content.readany()
            call.upstream_ns += time.perf_counter_ns() - waited
            if not chunk:
                break
            events = splitter.feed(chunk)
            if not events:
                continue
            for event in events:
                call.event_count += 1
                try:
                    body = jsonfast.loads(event.data)
                except (ValueError, RecursionError):
                    body = None
                dialect.read_event(call, event, body)
            await req.body(b"".join(event.raw for event in events), more=True)
    except EventTooLarge:
        call.fail(record.UPSTREAM)
        tail = dialect.stream_error(f"an event of the agent's stream is over {EVENT_LIMIT} bytes")
    except TimeoutError:
        call.fail(record.TIMEOUT)
        tail = dialect.stream_error("the agent's stream went silent for too long")
    except aiohttp.ClientError:
        call.fail(record.UPSTREAM)
        tail = dialect.stream_error("the agent's stream broke")
    if tail:
        await req.body(tail, more=True)
    await req.body(b"")
