"""The LLM plane: one matched request -> provider(s) -> the answer, and one usage event.

Passthrough first: when the client's wire format equals the provider's, the body goes upstream
with only our edits (model, ``stream_options.include_usage``) and the upstream bytes come back
unchanged, event by event, while an :class:`Observer` reads usage on the side. Only when the
formats differ does ``agw.llm.translate`` convert, through its canonical model.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from agw import jsonfast
from agw.config.llm import Provider
from agw.errors import InvalidRequest, PayloadTooLarge, Refusal
from agw.llm import translate
from agw.llm.content import Completion, prompt_of
from agw.llm.credential_health import CredentialHealth
from agw.llm.dialect import error_body, stream_error_frame
from agw.llm.discovery import ModelCatalog
from agw.llm.observe import Observer, estimate_output_tokens, estimate_tokens, request_tools
from agw.llm.providers import (
    FORWARDED_HEADERS,
    CredentialPicker,
    Key,
    auth_headers,
    chat_wire,
    responses_native,
    url_for,
)
from agw.llm.routing import RouteRefusal, Target, resolve
from agw.llm.shaping import (
    CLAUDE_CODE_HEADERS,
    needs_shaping,
    restore_event,
    restore_tool_names,
    shape,
)
from agw.llm.upstream import (
    ERROR_BODY_LIMIT,
    RESPONSE_LIMIT,
    BodyTooLarge,
    UpstreamPool,
    limit_text,
    read_capped,
)
from agw.logs import scrub
from agw.request import ClientGone, DisconnectWatch, Request
from agw.runtime.attribution import SessionDirectory, attribute
from agw.sse import EVENT_LIMIT, Event, EventTooLarge, SSESplitter, frame
from agw.types import Headers
from agw.usage.events import LlmUsageEvent, UsageSource
from agw.usage.recorder import UsageRecorder

log = logging.getLogger(__name__)

BODY_LIMIT = 16 * 1024 * 1024
_OPENAI_PATHS = {
    "/v1/chat/completions": "chat_completions",
    "/chat/completions": "chat_completions",
    "/v1/responses": "responses",
    "/responses": "responses",
    "/v1/models": "models",
    "/models": "models",
    "/v1/embeddings": "embeddings",
    "/embeddings": "embeddings",
}
_ANTHROPIC_PATHS = {"/v1/messages": "messages", "/v1/messages/count_tokens": "count_tokens"}
_CLIENT_WIRE = {"chat_completions": "chat", "responses": "responses", "messages": "messages"}
_PASSED_RESPONSE_HEADERS = ("retry-after", "x-request-id", "request-id")
_PASSED_PREFIXES = ("openai-", "anthropic-", "x-ratelimit-")
_JSON = b"application/json"
# What of a stream's answer is kept for the output estimate when its usage never comes (the
# first pieces sent; their share of text is applied to the rest): references, not copies.
RELAYED_KEPT = 256 * 1024


_Plan = tuple[Provider, str, str, bytes, dict[str, str], bool]


class Reply(Exception):
    """Answer the client now with an error in its dialect."""

    def __init__(self, status: int, message: str, error_type: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type


@dataclass
class Failure:
    """A failed upstream attempt, kept to answer with when every attempt failed."""

    status: int
    message: str
    error_type: str
    body: bytes = b""
    headers: Headers = field(default_factory=list)
    wire: str = ""
    repeatable: bool = True  # worth another round (not a timeout, not a credential cool-down)


@dataclass(slots=True)
class Call:
    """What one request has learned so far: becomes the usage event."""

    req: Request
    operation: str = ""
    started_ms: int = field(default_factory=lambda: time.time_ns() // 1_000_000)
    t0: int = field(default_factory=time.perf_counter_ns)
    upstream_ns: int = 0  # time spent waiting on the provider (the rest is the gateway's)
    first_byte_ns: int = 0  # streams: when the first event went to the client
    completion: Completion | None = None  # the answer's text, only with --trace-content
    stream: bool = False
    target: Target | None = None
    key: Key | None = None
    observer: Observer | None = None
    body: dict[str, Any] | None = None  # kept for the estimate when the provider reports none
    raw: bytes = b""  # the client's request body as it came
    request_tools: list[str] = field(default_factory=list)
    error_type: str | None = None
    status: int = 0
    finalized: bool = True
    client_wants_usage: bool = False  # chat clients: stream_options.include_usage
    renamed: dict[str, str] = field(default_factory=dict)  # upstream tool name -> the client's
    answer: bytes = b""  # the JSON answer the client got
    relayed: list[bytes] | None = None  # the stream's pieces the client got (RELAYED_KEPT)
    relayed_size: int = 0  # bytes of the stream the client got, all of them


def _passed_headers(resp: aiohttp.ClientResponse) -> Headers:
    out: Headers = []
    for name, value in resp.headers.items():
        lname = name.lower()
        if lname in _PASSED_RESPONSE_HEADERS or lname.startswith(_PASSED_PREFIXES):
            out.append((lname.encode(), value.encode("latin-1", "replace")))
    return out


def _error_message(body: bytes) -> str:
    try:
        data = jsonfast.loads(body)
    except ValueError:
        return body[:300].decode("utf-8", "replace")
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return str(err["message"])
    if isinstance(err, str):
        return err
    return body[:300].decode("utf-8", "replace")


class LlmPlane:
    edge_always = False  # a keyed LLM route cannot be used by a page: it lacks the key

    def __init__(
        self,
        recorder: UsageRecorder | None,
        directory: SessionDirectory | None = None,
        *,
        trace_content: bool = False,
    ) -> None:
        self.trace_content = trace_content  # keep prompts and completions for the traces
        self.directory = directory  # ACP sessions, for attribution (agw/runtime/attribution.py)
        self.pool = UpstreamPool()
        self.picker = CredentialPicker()
        self.recorder = recorder
        self.catalog = ModelCatalog(self.pool, self.picker)
        self.health = CredentialHealth()

    async def close(self) -> None:
        await self.pool.close()

    # --------------------------------------------------------------------------------- entry

    async def handle(self, req: Request, rejection: Refusal | None = None) -> None:
        call = Call(req)
        if self.trace_content:
            call.completion = Completion()
        try:
            if rejection is not None:
                raise Reply(rejection.status, rejection.message, rejection.code)
            if self._probe(call):
                await req.respond(200, b"")
                return
            if req.method == "POST" and req.headers.get("content-type") != "application/json":
                _check_content_type(req.headers.get("content-type", ""))
            try:
                raw = await req.read_body(BODY_LIMIT)
            except PayloadTooLarge as exc:
                raise Reply(413, exc.message, "protocol_validation_failed") from None
            work = self._work(call, raw)
            # The work is awaited here, not in a helper: every resumption of a coroutine walks
            # the whole chain of awaiting frames, and on the hot path each level is measurable.
            async with DisconnectWatch(req) as watch:
                await work
            if watch.gone:
                call.status, call.error_type, call.finalized = 499, "client_cancelled", False
        except Reply as exc:
            call.status, call.error_type = exc.status, exc.error_type
            if not req.started:
                await req.respond(
                    exc.status,
                    error_body(req.route.protocol, exc.status, exc.message),
                    headers=req.close_if_unread(),
                )
        except ClientGone:
            call.status, call.error_type, call.finalized = 499, "client_cancelled", False
        except Exception:
            log.exception("llm_request_failed", extra={"route_id": req.route.id})
            call.status, call.error_type = 500, "internal_error"
            if not req.started:
                await req.respond(
                    500, error_body(req.route.protocol, 500, "internal gateway error")
                )
        finally:
            self._record(call)

    def _probe(self, call: Call) -> bool:
        """Checks the path and method; True for Claude Code's ``HEAD /`` reachability probe."""
        req = call.req
        protocol = req.route.protocol
        if protocol == "cc" and req.method == "HEAD" and req.path in ("/", ""):
            call.operation, call.status = "probe", 200
            return True
        paths = _OPENAI_PATHS if protocol == "openai" else _ANTHROPIC_PATHS
        operation = paths.get(req.path)
        if operation is None:
            raise Reply(404, f"no {protocol} endpoint at {req.path}", "route_not_found")
        call.operation = operation
        want = "GET" if operation == "models" else "POST"
        if req.method != want:
            raise Reply(
                405, f"method {req.method} not allowed on {req.path}", "protocol_validation_failed"
            )
        return False

    def _work(self, call: Call, raw: bytes) -> Coroutine[Any, Any, None]:
        """Validates the request and resolves its targets; the coroutine that answers it."""
        req = call.req
        operation = call.operation
        if operation == "models":
            return self._models(call)
        body = _parse_body(raw)
        model = body.get("model", "")
        if not isinstance(model, str):
            raise Reply(400, "model must be a string", "protocol_validation_failed")
        stream = body.get("stream", False)
        if not isinstance(stream, bool):
            raise Reply(400, "stream must be a boolean", "protocol_validation_failed")
        call.stream = stream and operation in _CLIENT_WIRE
        opts = body.get("stream_options")
        call.client_wants_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        call.request_tools = request_tools(body, _CLIENT_WIRE.get(operation, "chat"))
        try:
            targets = resolve(
                req.snapshot, req.route.config, model, stream=call.stream, catalog=self.catalog
            )
        except RouteRefusal as exc:
            raise Reply(exc.status, exc.message, exc.error_type) from None
        if operation != "count_tokens" and not targets[0].upstream_model:
            raise Reply(
                400,
                "model is required (the route's provider has no default_model)",
                "protocol_validation_failed",
            )
        if operation == "count_tokens":
            return self._count_tokens(call, body, targets[0])
        call.body, call.raw = body, raw
        return self._forward(call, body, targets)

    # ------------------------------------------------------------------------------ forward

    def _upstream_wire(self, operation: str, provider: Provider) -> str:
        if operation == "embeddings":
            if chat_wire(provider) != "chat":
                raise Reply(
                    400,
                    f"provider type {provider.provider_type} has no embeddings API",
                    "protocol_validation_failed",
                )
            return "embeddings"
        if operation == "responses" and responses_native(provider):
            return "responses"
        return chat_wire(provider)

    def _payload(
        self, call: Call, body: dict[str, Any], target: Target, wire: str
    ) -> tuple[bytes, bool]:
        """The upstream body, and whether we asked for a usage chunk the client did not.
        When nothing needs editing, the client's own bytes go upstream as they came."""
        client_wire = _CLIENT_WIRE.get(call.operation, "embeddings")
        if (
            client_wire == wire
            and call.raw
            and body.get("model") == target.upstream_model
            and (not call.stream or (wire != "chat" and body.get("stream") is True))
            and not needs_shaping(target.provider, wire)
        ):
            return call.raw, False
        if client_wire == wire:
            out = dict(body)
        else:
            out = translate.translate_request(body, client_wire, wire)
        injected = False
        if wire == "gemini":
            out.pop("model", None)
            out.pop("stream", None)
        elif target.upstream_model:
            out["model"] = target.upstream_model
        if call.stream and wire != "gemini":
            out["stream"] = True
        if call.stream and wire == "chat":
            opts = out.get("stream_options")
            opts = dict(opts) if isinstance(opts, dict) else {}
            if opts.get("include_usage") is not True:
                opts["include_usage"] = True
                injected = client_wire == "chat"
            out["stream_options"] = opts
        call.renamed = shape(target.provider, wire, out)
        return json.dumps(out).encode(), injected

    async def _forward(self, call: Call, body: dict[str, Any], targets: list[Target]) -> None:
        """Every credential of every target in order; when all failed with a retryable error
        other than a timeout or a credential cool-down, the whole order again, up to the primary
        provider's ``network.max_retries`` times, ``retry_delay_seconds`` apart."""
        req = call.req
        net = targets[0].provider.network
        failure: Failure | None = None
        for round_ in range(1 + net.max_retries):
            if round_:
                waited = time.perf_counter_ns()
                await asyncio.sleep(net.retry_delay_seconds)
                call.upstream_ns += time.perf_counter_ns() - waited
            failure = None
            for plan in self._attempts(call, body, targets):
                if isinstance(plan, Failure):
                    failure = plan
                    continue
                failure = await self._attempt(call, *plan)
                if failure is None:
                    return
                log.info(
                    "upstream_attempt_failed",
                    extra={
                        "route_id": req.route.id,
                        "provider_id": plan[0].id,
                        "status": failure.status,
                        # scrubbed before it is cut: a key cut in half is no longer recognised
                        "error": scrub(failure.message)[:200],
                    },
                )
            if failure is None:
                return
            if not failure.repeatable:
                break
        assert failure is not None
        await self._fail(call, failure)

    def _attempts(
        self, call: Call, body: dict[str, Any], targets: list[Target]
    ) -> Iterator[Failure | _Plan]:
        """One round: each credential of each target, as what to send (a plain generator, not
        a coroutine, so the upstream call is awaited one frame up). A credential cooling down
        is a Failure to answer with if nothing else works."""
        req = call.req
        for target in targets:
            wire = self._upstream_wire(call.operation, target.provider)
            try:
                data, injected = self._payload(call, body, target, wire)
            except InvalidRequest as exc:
                raise Reply(400, exc.message, "protocol_validation_failed") from None
            provider = target.provider
            url = url_for(provider, wire, target.upstream_model, stream=call.stream)
            if req.query and wire == _CLIENT_WIRE.get(call.operation) and wire == "messages":
                url += ("&" if "?" in url else "?") + req.query
            tp = req.route.config.target_policy
            keys = self.picker.keys(
                req.snapshot,
                provider.id,
                list(tp.credential_scope_order),
                tp.credential_selector,
                target.credential_scope,
                self.health,
            )
            for key in keys:
                call.target, call.key = target, key
                if key.source == "cooling":
                    nxt = self.health.next_available(key.credential_id.split(","))
                    wait = f" (the first is back in {max(0, (nxt or 0) - time.time()):.0f}s)"
                    yield Failure(
                        429,
                        f'every credential of provider "{provider.id}" is cooling down after '
                        f"upstream errors{wait if nxt else ''}",
                        "provider_request_failed",
                        repeatable=False,
                    )
                    continue
                headers = {"content-type": "application/json", "accept": "application/json"}
                if call.stream:
                    headers["accept"] = "text/event-stream"
                for name in FORWARDED_HEADERS.get(wire, ()):
                    if name in req.headers and wire == _CLIENT_WIRE.get(call.operation):
                        headers[name] = req.headers[name]
                if provider.provider_type == "claudecode":
                    for name, value in CLAUDE_CODE_HEADERS.items():
                        headers.setdefault(name, value)
                headers.update(auth_headers(provider, wire, key.value))
                headers["traceparent"] = f"00-{req.trace.trace_id}-{req.trace.span_id}-01"
                yield provider, wire, url, data, headers, injected

    async def _attempt(
        self,
        call: Call,
        provider: Provider,
        wire: str,
        url: str,
        data: bytes,
        headers: dict[str, str],
        injected: bool,
    ) -> Failure | None:
        """One upstream call. Returns a Failure worth retrying elsewhere, or None when the
        client has its answer (success, or an upstream error that is not retryable)."""
        session = self.pool.session(provider)
        timeout = self.pool.timeout(provider, stream=call.stream)
        proxy = provider.network.proxy_url or None
        sent = time.perf_counter_ns()
        try:
            resp = await session.post(url, data=data, headers=headers, timeout=timeout, proxy=proxy)
        except TimeoutError:
            call.upstream_ns += time.perf_counter_ns() - sent
            return Failure(
                504,
                f"upstream {provider.id} timed out",
                "provider_request_failed",
                repeatable=False,
            )
        except aiohttp.ClientError as exc:
            call.upstream_ns += time.perf_counter_ns() - sent
            # scrubbed: aiohttp's errors quote the URL (an invalid one) or the proxy's (a
            # refused CONNECT), credentials included, and this message goes to the client
            return Failure(
                502,
                f"upstream {provider.id} unreachable: {scrub(str(exc))}",
                "provider_request_failed",
            )
        call.upstream_ns += time.perf_counter_ns() - sent
        async with resp:
            if resp.status >= 400:
                sent = time.perf_counter_ns()
                message = ""
                try:
                    raw = await read_capped(resp, ERROR_BODY_LIMIT)
                except BodyTooLarge:
                    raw = b""  # not passed on: agw's own error in the client's dialect instead
                    message = (
                        f"upstream answered {resp.status} with an error body larger than "
                        f"{limit_text(ERROR_BODY_LIMIT)} (the gateway's limit)"
                    )
                except (aiohttp.ClientError, TimeoutError):
                    raw = b""
                call.upstream_ns += time.perf_counter_ns() - sent
                message = message or _error_message(raw) or f"upstream answered {resp.status}"
                if call.key is not None and call.key.credential_id:
                    self.health.failed(
                        call.key.credential_id,
                        resp.status,
                        scrub(message),  # shown by GET /admin/credentials; it may echo a key
                        resp.headers.get("retry-after"),
                    )
                fail = Failure(
                    resp.status,
                    message,
                    "provider_request_failed",
                    raw,
                    [
                        (
                            b"content-type",
                            resp.headers.get("content-type", "application/json").encode(),
                        ),
                        *_passed_headers(resp),
                    ],
                    wire,
                )
                if resp.status == 429 or resp.status >= 500:
                    return fail
                await self._fail(call, fail)
                return None
            if call.key is not None and call.key.credential_id:
                self.health.succeeded(call.key.credential_id)
            observer = Observer(wire)
            call.observer = observer
            if call.stream:
                await self._stream(call, resp, wire, observer, injected)
            else:
                await self._json(call, resp, wire, observer)
            return None

    async def _json(
        self, call: Call, resp: aiohttp.ClientResponse, wire: str, observer: Observer
    ) -> None:
        req = call.req
        sent = time.perf_counter_ns()
        try:
            length = resp.content_length  # under the limit: read here, one frame less
            if length is not None and length <= RESPONSE_LIMIT:
                raw = await resp.read()
            else:
                raw = await read_capped(resp, RESPONSE_LIMIT)
        except BodyTooLarge:
            raise Reply(
                502,
                f"upstream answer larger than {limit_text(RESPONSE_LIMIT)} (the gateway's limit "
                "on a non-streamed answer)",
                "provider_request_failed",
            ) from None
        except TimeoutError:
            raise Reply(
                504, f"upstream {resp.url.host} timed out", "provider_request_failed"
            ) from None
        except aiohttp.ClientError as exc:
            raise Reply(
                502, f"upstream read failed: {scrub(str(exc))}", "provider_request_failed"
            ) from None
        finally:
            call.upstream_ns += time.perf_counter_ns() - sent
        if call.renamed:
            try:
                answer = jsonfast.loads(raw)
            except ValueError:
                answer = None
            if isinstance(answer, dict) and restore_tool_names(answer, call.renamed):
                raw = json.dumps(answer).encode()
        observer.body(raw)
        if call.completion is not None:
            call.completion.feed(raw)
        client_wire = _CLIENT_WIRE.get(call.operation, wire)
        headers = _passed_headers(resp)
        if client_wire != wire:
            target = call.target
            model = (target.logical_model or target.upstream_model) if target else None
            try:
                converted = translate.translate_response(
                    jsonfast.loads(raw), wire, client_wire, model=model
                )
            except ValueError:
                raise Reply(
                    502, "upstream answered invalid JSON", "provider_request_failed"
                ) from None
            raw = json.dumps(converted).encode()
            ctype = _JSON
        else:
            ctype = resp.headers.get("content-type", "application/json").encode()
        call.status = resp.status
        call.answer = raw
        await req.respond(resp.status, raw, ctype, headers)

    async def _stream(
        self,
        call: Call,
        resp: aiohttp.ClientResponse,
        wire: str,
        observer: Observer,
        injected: bool,
    ) -> None:
        req = call.req
        client_wire = _CLIENT_WIRE.get(call.operation, wire)
        translator = None
        if client_wire != wire:
            target = call.target
            model = (target.logical_model or target.upstream_model) if target else ""
            translator = translate.StreamTranslator(
                wire, client_wire, model=model, include_usage=call.client_wants_usage
            )
        await req.start(
            200,
            [
                (b"content-type", b"text/event-stream"),
                (b"cache-control", b"no-cache"),
                *_passed_headers(resp),
            ],
        )
        call.status = 200
        splitter = SSESplitter()
        chunks = resp.content.iter_any()
        clock = time.perf_counter_ns
        relayed: list[bytes] = []
        call.relayed = relayed
        too_large = False
        try:
            while True:
                waited = clock()
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    call.upstream_ns += clock() - waited
                out: list[bytes] = []
                for event in splitter.feed(chunk):
                    if call.renamed:
                        event = _restored(event, call.renamed)
                    observer.raw_event(event)
                    if call.completion is not None:
                        call.completion.feed(event.data)
                    if translator is not None:
                        out.append(translator.feed(event.name or None, event.data))
                    elif not (injected and observer.usage_only_chunk):
                        out.append(event.raw)
                if out:
                    payload = b"".join(out)
                    await req.body(payload, more=True)
                    if call.relayed_size < RELAYED_KEPT:
                        relayed.append(payload)
                    call.relayed_size += len(payload)
                    if not call.first_byte_ns:
                        call.first_byte_ns = clock()
        except EventTooLarge:
            too_large = True
            resp.close()  # the rest is never read: the connection is not reused
            log.info("upstream_event_too_large", extra={"route_id": req.route.id})
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.info("upstream_stream_failed", extra={"route_id": req.route.id, "error": str(exc)})
        if not observer.finished:
            call.error_type, call.finalized = "provider_stream_failed", False
            message = "upstream stream ended early"
            if too_large:
                message = (
                    f"upstream stream event larger than {limit_text(EVENT_LIMIT)} (the gateway's "
                    "limit on one event); the stream was cut"
                )
            if translator is not None:
                tail = translator.fail(message) if too_large else translator.finish()
            else:
                tail = stream_error_frame(req.route.protocol, 502, message)
                if wire == "chat":
                    tail += b"data: [DONE]\n\n"
            await req.body(tail, more=True)
        elif translator is not None:
            await req.body(translator.finish(), more=True)
        await req.body(b"")

    async def _fail(self, call: Call, failure: Failure) -> None:
        """Answer with an upstream failure: unchanged when the client speaks the provider's
        format, else its status and message in the client's dialect."""
        req = call.req
        call.status, call.error_type = failure.status, failure.error_type
        client_wire = _CLIENT_WIRE.get(call.operation, "embeddings")
        if failure.body and failure.wire == client_wire:
            ctype = next((v for k, v in failure.headers if k == b"content-type"), _JSON)
            rest = [(k, v) for k, v in failure.headers if k != b"content-type"]
            await req.respond(failure.status, failure.body, ctype, rest)
            return
        await req.respond(
            failure.status, error_body(req.route.protocol, failure.status, failure.message)
        )

    # ------------------------------------------------------------------- models, count_tokens

    async def _models(self, call: Call) -> None:
        req = call.req
        tp = req.route.config.target_policy
        if tp.type == "logical-model":
            data = [
                {"id": t.name, "object": "model", "created": 0, "owned_by": "agw"}
                for t in tp.model_targets
            ]
            await req.respond(200, json.dumps({"object": "list", "data": data}).encode())
            return
        provider = req.snapshot.providers[tp.provider_id]
        call.target = Target(provider, "")
        if chat_wire(provider) == "chat" or provider.provider_type == "openai":
            await self._relay(call, provider, "models", {})
            return
        ids = [provider.default_model] if provider.default_model else []
        data = [
            {"id": i, "object": "model", "created": 0, "owned_by": provider.provider_type}
            for i in ids
        ]
        await req.respond(200, json.dumps({"object": "list", "data": data}).encode())

    async def _relay(
        self,
        call: Call,
        provider: Provider,
        wire: str,
        headers: dict[str, str],
        data: bytes | None = None,
    ) -> None:
        """One call to the provider with its first key, the answer passed back unchanged
        (``models`` is a GET, ``count_tokens`` a POST of ``data``)."""
        req = call.req
        key = next(
            iter(self.picker.keys(req.snapshot, provider.id, ["provider_id"], "round_robin"))
        )
        call.key = key
        headers = {**headers, **auth_headers(provider, wire, key.value)}
        method = "GET" if data is None else "POST"
        try:
            async with self.pool.session(provider).request(
                method,
                url_for(provider, wire, "", stream=False),
                data=data,
                headers=headers,
                timeout=self.pool.timeout(provider, stream=False),
            ) as resp:
                limit = RESPONSE_LIMIT if resp.status < 400 else ERROR_BODY_LIMIT
                try:
                    raw = await read_capped(resp, limit)
                except BodyTooLarge:
                    raise Reply(
                        502,
                        f"upstream answered {resp.status} with a body larger than "
                        f"{limit_text(limit)} (the gateway's limit)",
                        "provider_request_failed",
                    ) from None
                call.status = resp.status
                ctype = resp.headers.get("content-type", "application/json").encode()
                await req.respond(resp.status, raw, ctype, _passed_headers(resp))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise Reply(
                502,
                f"upstream {provider.id} unreachable: {scrub(str(exc))}",
                "provider_request_failed",
            ) from None

    async def _count_tokens(self, call: Call, body: dict[str, Any], target: Target) -> None:
        req = call.req
        provider = target.provider
        call.target = target
        if provider.provider_type in ("anthropic", "claudecode"):
            payload = dict(body)
            if target.upstream_model:
                payload["model"] = target.upstream_model
            headers = {"content-type": "application/json"}
            for name in FORWARDED_HEADERS["messages"]:
                if name in req.headers:
                    headers[name] = req.headers[name]
            await self._relay(call, provider, "count_tokens", headers, json.dumps(payload).encode())
            return
        await req.respond(200, json.dumps({"input_tokens": estimate_tokens(body)}).encode())
        call.status = 200

    # --------------------------------------------------------------------------------- usage

    def _record(self, call: Call) -> None:
        if self.recorder is None:
            return
        req = call.req
        obs = call.observer
        tokens = obs.tokens if obs else None
        source: UsageSource
        if (
            obs is not None
            and tokens is not None
            and tokens.seen
            and (obs.finished or obs.final_usage)
        ):
            source, tin, tout = "provider", tokens.input, tokens.output
        elif call.body is not None and call.target is not None and call.status:
            # The answer's own usage never came (a cut stream, a client that left): the input
            # the provider reported if any, else estimated; the output estimated from what the
            # client received (or what the provider had counted, when that is more).
            source = "estimated"
            tin = tokens.input if tokens is not None and tokens.input else 0
            tin = tin or estimate_tokens(call.body)
            if call.relayed is not None:
                tout = estimate_output_tokens(call.relayed, call.relayed_size, stream=True)
            else:
                tout = estimate_output_tokens([call.answer], len(call.answer), stream=False)
            tout = max(tout, tokens.output if tokens is not None else 0)
        else:
            source, tin, tout = "missing", 0, 0
        status = call.status or req.status or 500
        finished = time.time_ns() // 1_000_000
        done_ns = time.perf_counter_ns()
        target = call.target
        session, acp_session = attribute(req.headers, self.directory)
        event = LlmUsageEvent(
            trace_id=req.trace.trace_id,
            span_id=req.trace.span_id,
            parent_span_id=req.trace.parent_span_id,
            agent_depth=req.trace.depth,
            started_at=call.started_ms,
            finished_at=finished,
            route_id=req.route.id,
            route_protocol=req.route.protocol,
            virtual_key_id=req.virtual_key_id,
            success=status < 400 and call.error_type is None,
            status_code=status,
            error_type=call.error_type,
            llm_api=req.route.protocol,
            api_operation=call.operation or None,
            provider_id=target.provider.id if target else None,
            provider_type=target.provider.provider_type if target else None,
            logical_model=(target.logical_model or None) if target else None,
            upstream_model=(target.upstream_model or None) if target else None,
            credential_source=call.key.source if call.key else None,
            credential_id=(call.key.credential_id or None) if call.key else None,
            stream=call.stream,
            input_tokens=tin,
            output_tokens=tout,
            total_tokens=tokens.total_tokens if source == "provider" and tokens else tin + tout,
            usage_finalized=call.finalized and (obs.finished if obs else True),
            request_tool_count=len(call.request_tools),
            request_tool_names=call.request_tools,
            tool_call_count=len(obs.tool_names) if obs else 0,
            tool_names=list(obs.tool_names) if obs else [],
            usage_source=source,
            cached_input_tokens=tokens.cached_input if tokens else 0,
            cache_creation_input_tokens=tokens.cache_creation if tokens else 0,
            reasoning_tokens=tokens.reasoning if tokens else 0,
            session_id=session,
            acp_session_id=acp_session,
            agent_id=req.route.agent_id,
            http_method=req.method,
            http_path=req.scope["path"],
            overhead_ms=max(0, done_ns - call.t0 - call.upstream_ns) / 1e6,
            ttft_ms=(call.first_byte_ns - call.t0) / 1e6 if call.first_byte_ns else None,
        )
        if call.completion is not None:
            event.trace_content = {
                "input": prompt_of(call.body),
                "output": call.completion.text(),
            }
        self.recorder.emit(event)


def _restored(event: Event, renamed: dict[str, str]) -> Event:
    data = restore_event(event.name, event.data, renamed)
    return event if data is None else Event(frame(data, event.name), event.name, data)


def _check_content_type(value: str) -> None:
    """LLM POST bodies are JSON, and say so: every SDK and agent sends ``application/json``.
    What a browser may send cross-site without a CORS preflight (``text/plain``, forms, no
    type at all) is refused, so a web page cannot make the operator's browser spend an open
    route's credits (docs/security.md)."""
    mime = value.partition(";")[0].strip().lower()
    if mime == "application/json":
        return
    raise Reply(
        415,
        f"Content-Type must be application/json, not {mime[:100] or 'none'}",
        "protocol_validation_failed",
    )


def _parse_body(raw: bytes) -> dict[str, Any]:
    try:
        body = jsonfast.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Reply(400, f"invalid JSON body: {exc}", "protocol_validation_failed") from None
    if not isinstance(body, dict):
        raise Reply(400, "request body must be a JSON object", "protocol_validation_failed")
    return body
