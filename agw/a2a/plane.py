"""The A2A plane: step 4 of the request pipeline for ``a2a`` routes (agw.dataplane.Plane).

One route puts one remote agent (an ``a2aServices`` entry) behind a path prefix, and serves
under it (docs/a2a.md):

- ``GET <route>/.well-known/agent-card.json`` (and the legacy ``agent.json``): the agent's card,
  rewritten to the route (agw.a2a.card). It needs no credential even on a route that does
  (the card says how to authenticate); every other refusal of the dispatcher holds.
- ``POST <route>``: the JSON-RPC binding. The envelope is checked (JSON, ``jsonrpc: "2.0"``, an
  id that is a string, an integer or null, a method name); a method of neither version
  (agw.a2a.protocol) is answered ``-32601`` by the gateway, not relayed.
- any other path: the HTTP+JSON binding (1.0's paths and 0.3's ``/v1/...``); a path that is no
  A2A operation is 404, a known one with another HTTP method 405.

A relayed call goes, body unchanged, to the agent's interface of its binding and version, with
the service's credentials instead of the caller's (agw.a2a.upstream), and its answer comes back
as it came (agw.a2a.relay). Every request records one ``a2a_usage_events`` row, refusals
included (agw.a2a.record). Errors are in the caller's binding: a JSON-RPC error object on
JSON-RPC (HTTP 400 for a malformed request, 200 for a method or operation the agent does not
offer, the refusal's status otherwise), the ``{"error": {code, status, message, details}}``
object on HTTP+JSON and the card.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, Final
from urllib.parse import quote

import orjson

from agw import jsonfast
from agw.a2a import record
from agw.a2a.card import CardCache, interfaces_of, pick, rewrite
from agw.a2a.limits import admit_message, settle_message
from agw.a2a.protocol import (
    CARD_METHOD,
    HTTP_JSON,
    INVALID_REQUEST,
    JSONRPC,
    METHOD_NOT_FOUND,
    METHODS,
    PARSE_ERROR,
    ROW_BINDING,
    UNSUPPORTED_OPERATION,
    Method,
    RestMiss,
    rest_call,
    rpc_error_body,
)
from agw.a2a.record import Call, usage_event
from agw.a2a.relay import Dialect, RpcDialect, relay
from agw.a2a.upstream import Upstream, request_headers
from agw.config.a2a import A2aService
from agw.errors import PayloadTooLarge, Refusal
from agw.policy.authz import authorize, authorize_session
from agw.policy.limits import Limiter
from agw.request import ClientGone, DisconnectWatch, Request
from agw.rpcids import ID_MAX_CHARS, METHOD_MAX_CHARS, valid_id
from agw.types import JsonObj
from agw.usage.recorder import UsageRecorder

log = logging.getLogger(__name__)

CARD_PATHS: Final = ("/.well-known/agent-card.json", "/.well-known/agent.json")
BODY_LIMIT: Final = 16 * 1024 * 1024  # a request body: messages may carry files inline
_JSON_TYPES: Final = ("application/json", "application/a2a+json")
_NOT_JSON: Final = "Content-Type must be application/json"


class A2aPlane:
    """The data plane's handler of ``a2a`` routes."""

    # Host and Origin are checked on every request, keyed routes included: the card's URLs
    # are made from the Host, so an untrusted one (a poisoned cache, a rebinding page) must
    # not name where agents send their credentials (docs/a2a.md, "The card")
    edge_always = True

    def __init__(self, recorder: UsageRecorder | None, *, limiter: Limiter | None = None) -> None:
        self.recorder = recorder
        self.limiter = limiter or Limiter()  # messages are admitted against it (agw.a2a.limits)
        self.upstream = Upstream()
        self.cards = CardCache(self.upstream)

    async def close(self) -> None:
        await self.upstream.close()

    async def handle(self, req: Request, refusal: Refusal | None) -> None:
        call = Call(req.route.config.service_id)
        dialect = RpcDialect(None) if req.path == "/" else Dialect()
        call.binding = ROW_BINDING[JSONRPC if req.path == "/" else HTTP_JSON]
        try:
            if req.path in CARD_PATHS:
                call.method, call.binding = CARD_METHOD, "card"
                if refusal is not None and refusal.status != 401:
                    raise refusal
                await self._card(req, call)
            elif refusal is not None:
                if isinstance(dialect, RpcDialect) and req.method == "POST":
                    with contextlib.suppress(ClientGone, Refusal):
                        self._envelope((await self._json(req))[1], call, dialect)
                raise refusal
            elif isinstance(dialect, RpcDialect):
                await self._jsonrpc(req, call, dialect)
            else:
                await self._rest(req, call)
        except Refusal as exc:
            call.fail(exc.code)
            call.status = exc.status
            if not req.started:
                await self.render(req, exc, dialect)
                call.status = req.status
        except ClientGone:
            call.status = 499
            call.fail(record.CANCELLED)
        except Exception:
            log.exception("a2a_request_failed", extra={"route_id": req.route.id})
            call.status = 500
            call.fail(record.INTERNAL)
            if not req.started:
                await req.respond(
                    500, dialect.error_body(500, "internal gateway error", "internal")
                )
        finally:
            settle_message(req)
        if self.recorder is not None:
            self.recorder.emit(usage_event(req, call))

    @staticmethod
    async def render(req: Request, refusal: Refusal, dialect: Dialect) -> None:
        """A refusal in the binding's shape, with its status (``WWW-Authenticate: Bearer`` on
        401)."""
        headers = refusal.answer_headers()
        if refusal.status == 401 and not any(n == b"www-authenticate" for n, _ in headers):
            headers = [(b"www-authenticate", b"Bearer"), *headers]
        if isinstance(dialect, RpcDialect) and isinstance(refusal.detail, int):
            body = rpc_error_body(dialect.msg_id, refusal.detail, refusal.message)
        elif refusal.code == "rate_limited" and isinstance(refusal.detail, dict):
            body = dialect.limit_body(refusal.message, refusal.detail)
        else:
            body = dialect.error_body(refusal.status, refusal.message, refusal.code)
        await req.respond(refusal.status, body, headers=headers + req.close_if_unread())

    # ------------------------------------------------------------------------------ the card

    async def _card(self, req: Request, call: Call) -> None:
        if req.method != "GET":
            raise _not_allowed("GET")
        service = self._service(req, "")
        entry = await self.cards.get(service)
        card = rewrite(entry.card, entry.interfaces, route_url(req), req.route.needs_credential)
        await req.respond(200, orjson.dumps(card))

    # ------------------------------------------------------------------------------ JSON-RPC

    async def _jsonrpc(self, req: Request, call: Call, dialect: RpcDialect) -> None:
        if req.method != "POST":
            raise _not_allowed("POST")
        raw, body = await self._json(req)
        raw_method = self._envelope(body, call, dialect)
        method = METHODS.get(raw_method)
        if method is None:
            raise Refusal(
                200,
                "method_not_found",
                f"Method not found: {raw_method} (the gateway relays the A2A methods of 1.0 "
                "and 0.3, docs/a2a.md#methods)",
                detail=METHOD_NOT_FOUND,
            )
        call.version, call.stream = method.version, method.stream
        call.saw_request(body.get("params"))
        service = self._service(req, method.name)
        interfaces = (await self.cards.get(service)).interfaces
        interface = pick(interfaces, JSONRPC, method.version)
        if interface is None:
            raise Refusal(
                200,
                "unsupported_operation",
                f'the agent of a2a service "{service.id}" offers no JSON-RPC interface',
                detail=UNSUPPORTED_OPERATION,
            )
        await self._relay(req, call, dialect, service, method, interface.url, raw)

    async def _json(self, req: Request) -> tuple[bytes, Any]:
        """The request body, and parsed (a 400 ``-32700`` when it is not JSON)."""
        if not _json_content(req):
            raise Refusal(415, record.INVALID, _NOT_JSON, detail=INVALID_REQUEST)
        raw = await self._body(req)
        try:
            return raw, jsonfast.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise Refusal(400, record.INVALID, f"Parse error: {exc}", detail=PARSE_ERROR) from None

    @staticmethod
    def _envelope(body: Any, call: Call, dialect: RpcDialect) -> str:
        """The method of a JSON-RPC request, once its envelope is checked; its id goes to the
        answer and the row."""
        if isinstance(body, list):
            raise _invalid("batch requests are not supported")
        if not isinstance(body, dict):
            raise _invalid("a JSON-RPC request must be a JSON object")
        msg_id = body.get("id")
        if msg_id is not None and not valid_id(msg_id):  # ids and methods reach rows and logs
            raise _invalid(
                f"id must be a string of at most {ID_MAX_CHARS} characters, an integer or null"
            )
        dialect.msg_id = msg_id
        call.request_id = None if msg_id is None else str(msg_id)
        method = body.get("method")
        if isinstance(method, str) and len(method) <= METHOD_MAX_CHARS:
            call.method = method
        if body.get("jsonrpc") != "2.0":
            raise _invalid('jsonrpc must be exactly "2.0"')
        if not isinstance(method, str) or not method:
            raise _invalid("method is required")
        if len(method) > METHOD_MAX_CHARS:
            raise _invalid(f"method must be at most {METHOD_MAX_CHARS} characters")
        return method

    # ----------------------------------------------------------------------------- HTTP+JSON

    async def _rest(self, req: Request, call: Call) -> None:
        try:
            found = rest_call(req.method, req.path)
        except RestMiss as miss:
            if miss.allowed:
                raise _not_allowed(", ".join(miss.allowed)) from None
            raise Refusal(404, record.NOT_FOUND, f"no A2A operation at {req.path}") from None
        method = found.method
        call.method, call.version, call.stream = method.name, method.version, method.stream
        body: bytes | None = None
        if req.method == "POST":  # a body, when there is one (a 0.3 cancel has none), is JSON
            body = await self._body(req)
            parsed: object = None
            if body.strip():
                if not _json_content(req):
                    raise Refusal(415, record.INVALID, _NOT_JSON)
                try:
                    parsed = jsonfast.loads(body)
                except (ValueError, RecursionError) as exc:
                    raise Refusal(400, record.INVALID, f"invalid JSON body: {exc}") from None
            call.saw_request(parsed, found.task_id)
        else:
            call.saw_request(None, found.task_id)
        service = self._service(req, method.name)
        interfaces = (await self.cards.get(service)).interfaces
        interface = pick(interfaces, HTTP_JSON, method.version)
        if interface is None:
            raise Refusal(
                400,
                "unsupported_operation",
                f'the agent of a2a service "{service.id}" offers no HTTP+JSON interface',
            )
        url = interface.url.rstrip("/") + _upstream_path(req)
        if req.query:
            url += "?" + req.query
        await self._relay(req, call, Dialect(), service, method, url, body)

    # ------------------------------------------------------------------------------- shared

    @staticmethod
    def _service(req: Request, method: str) -> A2aService:
        """The route's service, once the route's authorization rules allow ``method`` (the
        card: the deny rules alone)."""
        service_id: str = req.route.config.service_id
        a2a = {"service_id": service_id, "method": method}
        refusal = authorize(req, a2a=a2a) if method else authorize_session(req, a2a=a2a)
        if refusal is not None:
            raise refusal
        service: A2aService | None = req.snapshot.a2a_services.get(service_id)
        if service is None or service.disabled:
            raise Refusal(403, record.SERVICE_DISABLED, f'a2a service "{service_id}" is disabled')
        return service

    @staticmethod
    async def _body(req: Request) -> bytes:
        try:
            return await req.read_body(BODY_LIMIT)
        except PayloadTooLarge as exc:
            raise Refusal(413, record.INVALID, exc.message, detail=INVALID_REQUEST) from None

    async def _relay(
        self,
        req: Request,
        call: Call,
        dialect: Dialect,
        service: A2aService,
        method: Method,
        url: str,
        body: bytes | None,
    ) -> None:
        await admit_message(self.limiter, req, service.id, method.name, call.context_id)
        card = None
        if method.card:

            def card(obj: JsonObj) -> JsonObj:
                found = interfaces_of(obj, service.card_url)
                return rewrite(obj, found, route_url(req), req.route.needs_credential)

        async with DisconnectWatch(req) as watch:
            await relay(
                self.upstream,
                req,
                call,
                dialect,
                service=service,
                url=url,
                headers=request_headers(req, service),
                body=body,
                card=card,
            )
        if watch.gone:
            call.status = 499
            call.fail(record.CANCELLED)


def route_url(req: Request) -> str:
    """The route's own URL as the caller reached it: its scheme, its ``Host``, the prefix."""
    host = req.headers.get("host", "")
    if not host:
        server = req.scope.get("server") or ("localhost", None)
        host = server[0] if server[1] is None else f"{server[0]}:{server[1]}"
    scheme = req.scope.get("scheme", "http")
    return f"{scheme}://{host}{req.route.path_prefix.rstrip('/')}"


def _upstream_path(req: Request) -> str:
    """The path under the route as the client sent it (percent-encoding kept)."""
    raw = req.scope.get("raw_path")
    prefix = req.route.path_prefix
    if isinstance(raw, bytes):
        text = raw.decode("latin-1")
        if text.startswith(prefix):
            tail = text[len(prefix) :]
            return tail if tail.startswith("/") else "/" + tail
    return quote(req.path, safe="/:@!$&'()*+,;=-._~")


def _json_content(req: Request) -> bool:
    return req.media_type in _JSON_TYPES


def _invalid(message: str) -> Refusal:
    return Refusal(400, record.INVALID, message, detail=INVALID_REQUEST)


def _not_allowed(allow: str) -> Refusal:
    return Refusal(405, record.INVALID, "method not allowed", headers=[(b"allow", allow.encode())])
