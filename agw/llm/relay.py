"""Answers going back to the client: a JSON answer, an SSE stream (passed through event by
event, or translated), and the one-call relays of ``/models`` and ``count_tokens``.

Passthrough first: when the client's wire format equals the provider's, the upstream bytes come
back unchanged, event by event, while the :class:`Observer` reads usage on the side. Only when
the formats differ does :mod:`agw.llm.translate` convert, through its canonical model.
"""

from __future__ import annotations

import json
import logging
import re
import time

import aiohttp

from agw import jsonfast
from agw.errors import Refusal
from agw.llm import translate
from agw.llm.call import CLIENT_WIRE, Call
from agw.llm.observe import Observer, estimate_tokens, event_output_chars
from agw.llm.providers import (
    ERROR_BODY_LIMIT,
    RESPONSE_LIMIT,
    BodyTooLarge,
    CredentialPicker,
    UpstreamPool,
    error_dialect,
    kind_of,
    limit_text,
    read_capped,
    restore_event,
    restore_tool_names,
    wire_format,
)
from agw.llm.providers.tokens import Usage
from agw.llm.routing import Target
from agw.llm.stream_end import StreamCloser
from agw.logs import scrub
from agw.policy.limit_types import INPUT
from agw.policy.limits import Admission
from agw.sse import EVENT_LIMIT, Event, EventTooLarge, SSESplitter, frame
from agw.types import Headers, JsonObj

log = logging.getLogger(__name__)

_PASSED_RESPONSE_HEADERS = ("retry-after", "x-request-id", "request-id")
_PASSED_PREFIXES = ("openai-", "anthropic-", "x-ratelimit-")
JSON = b"application/json"
# What of a stream's answer is kept for the output estimate when its usage never comes (the
# first pieces sent; their share of text is applied to the rest): references, not copies.
RELAYED_KEPT = 256 * 1024


def passed_headers(resp: aiohttp.ClientResponse) -> Headers:
    """The upstream answer's headers a client may see (request ids, the provider's own rate
    limits). The IETF ``RateLimit`` / ``RateLimit-Policy`` fields are the gateway's own
    (docs/limits.md): an upstream's are not passed on, and one that does not parse is logged."""
    out: Headers = []
    for name, value in resp.headers.items():
        lname = name.lower()
        if lname in _PASSED_RESPONSE_HEADERS or lname.startswith(_PASSED_PREFIXES):
            out.append((lname.encode(), value.encode("latin-1", "replace")))
        elif lname in _IETF_RATELIMIT and not _RATELIMIT_FIELD.fullmatch(value):
            _malformed_ratelimit(resp, lname, value)
    return out


_IETF_RATELIMIT = ("ratelimit", "ratelimit-policy")
# an sf-list of items with parameters (RFC 8941, as the RateLimit draft uses it), loosely
_SF_ITEM = (
    r'\s*(?:"[^"\\]*"|[A-Za-z*][\w.*:/%-]*)'
    r'(?:\s*;\s*[a-z*][a-z0-9_.*-]*(?:=(?:-?\d{1,15}(?:\.\d{1,3})?|"[^"\\]*"|[A-Za-z*][\w.*:/%-]*'
    r"|:[A-Za-z0-9+/=]*:|\?[01]))?)*\s*"
)
_RATELIMIT_FIELD = re.compile(f"{_SF_ITEM}(?:,{_SF_ITEM})*")
_MALFORMED_SEEN: set[tuple[str, str]] = set()  # logged once per upstream host and field


def _malformed_ratelimit(resp: aiohttp.ClientResponse, name: str, value: str) -> None:
    key = (resp.url.host or "", name)
    if key in _MALFORMED_SEEN or len(_MALFORMED_SEEN) >= 1024:
        return
    _MALFORMED_SEEN.add(key)
    log.warning(
        "upstream_ratelimit_header_malformed",
        extra={"upstream_host": key[0], "header": name, "value": scrub(value)[:200]},
    )


# ----------------------------------------------------------------------------------- JSON


async def relay_json(
    call: Call, resp: aiohttp.ClientResponse, wire: str, observer: Observer
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
        raise Refusal(
            502,
            "provider_request_failed",
            f"upstream answer larger than {limit_text(RESPONSE_LIMIT)} (the gateway's limit "
            "on a non-streamed answer)",
        ) from None
    except TimeoutError:
        raise Refusal(
            504, "provider_request_failed", f"upstream {resp.url.host} timed out"
        ) from None
    except aiohttp.ClientError as exc:
        raise Refusal(
            502, "provider_request_failed", f"upstream read failed: {scrub(str(exc))}"
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
    client_wire = CLIENT_WIRE.get(call.operation, wire)
    headers = passed_headers(resp)
    if client_wire != wire:
        target = call.target
        model = (target.logical_model or target.upstream_model) if target else None
        try:
            converted = translate.translate_response(
                jsonfast.loads(raw), wire, client_wire, model=model
            )
        except ValueError:
            raise Refusal(
                502, "provider_request_failed", "upstream answered invalid JSON"
            ) from None
        raw = json.dumps(converted).encode()
        ctype = JSON
    else:
        ctype = resp.headers.get("content-type", "application/json").encode()
    call.status = resp.status
    call.answer = raw
    await req.respond(resp.status, raw, ctype, headers)


# ------------------------------------------------------------------------------------ SSE


async def relay_stream(
    call: Call,
    resp: aiohttp.ClientResponse,
    wire: str,
    observer: Observer,
    injected: bool,
) -> None:
    """The upstream's SSE stream to the client, event by event: passed through (less the usage
    chunk the gateway asked for when ``injected``), or translated to the client's format. A
    stream cut short ends with an error event in the client's dialect."""
    req = call.req
    client_wire = CLIENT_WIRE.get(call.operation, wire)
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
            *passed_headers(resp),
        ],
    )
    call.status = 200
    splitter = SSESplitter()
    chunks = resp.content.iter_any()
    clock = time.perf_counter_ns
    relayed: list[bytes] = []
    call.relayed = relayed
    too_large = False
    # limits that count tokens or dollars: the stream is counted as it flows (docs/limits.md)
    admission: Admission | None = req.admission
    meter = admission is not None and admission.metered
    closer: StreamCloser | None = None
    if meter and translator is None and admission is not None and admission.can_cut:
        closer = StreamCloser(wire, include_usage=call.client_wants_usage)
    chars = 0  # output characters of the events read so far
    pending: list[str] = []  # the data of the events not read yet
    unread = 0  # their bytes
    room_for: int | None = None  # the reported input that ``room`` was found for
    room = 0.0  # the output characters the stream may reach without a look (4 per token)
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
                if meter and admission is not None:
                    if closer is not None:
                        closer.see(event)
                    # an event's output is at most its bytes: it is read (parsed) only once
                    # what was relayed might pass what the request holds
                    pending.append(event.data)
                    unread += len(event.data)
                    if observer.finished:
                        continue
                    usage = observer.usage if observer.usage_seen else None
                    if usage is None or usage.output_tokens * 4 <= room:
                        reported = usage.input_tokens if usage is not None else 0
                        if reported != room_for:  # what the hold covers, found once per input
                            room_for, room = reported, admission.room(reported) * 4
                        if chars + unread <= room:
                            continue
                    if not _may_pass(call, admission, chars + unread):
                        continue
                    chars += sum(event_output_chars(data) for data in pending)
                    pending.clear()
                    unread = 0
                    room_for = None  # the hold may grow: found again
                    if await _metered(call, admission, chars):
                        out.append(_cut_tail(call, admission, chars, translator, closer))
                        break
            if out:
                payload = b"".join(out)
                await req.body(payload, more=True)
                if call.relayed_size < RELAYED_KEPT:
                    relayed.append(payload)
                call.relayed_size += len(payload)
                if not call.first_byte_ns:
                    call.first_byte_ns = clock()
            if call.cut:
                resp.close()  # the rest is never read
                break
    except EventTooLarge:
        too_large = True
        resp.close()  # the rest is never read: the connection is not reused
        log.info("upstream_event_too_large", extra={"route_id": req.route.id})
    except (aiohttp.ClientError, TimeoutError) as exc:
        log.info("upstream_stream_failed", extra={"route_id": req.route.id, "error": str(exc)})
    if call.cut:
        call.finalized = False  # the row's usage is estimated from what the client got
    elif not observer.finished:
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
            tail = error_dialect(req.route.protocol).stream_frame(502, message)
            tail += wire_format(wire).stream_tail
        await req.body(tail, more=True)
    elif translator is not None:
        await req.body(translator.finish(), more=True)
    await req.body(b"")


def _counts(call: Call, admission: Admission, chars: int) -> tuple[int, int]:
    """A metered stream's input (as reported; 0 while unknown) and output tokens so far: the
    provider's running count, or characters / 4 of what was relayed, whichever is more."""
    observer = call.observer
    usage = observer.usage if observer is not None and observer.usage_seen else None
    if usage is None:
        return 0, -(-chars // 4)
    return usage.input_tokens, max(usage.output_tokens, -(-chars // 4))


def _may_pass(call: Call, admission: Admission, chars: int) -> bool:
    """Whether a stream with at most ``chars`` characters of output may have passed its hold."""
    tin, tout = _counts(call, admission, chars)
    return admission.need(tin, tout) is not None


async def _metered(call: Call, admission: Admission, chars: int) -> bool:
    """Counts a stream as it flows (docs/limits.md); True when a ``cut`` limit ends it."""
    tin, tout = _counts(call, admission, chars)
    need = admission.need(tin, tout)
    if need is None:
        return False
    if await admission.flow(need) is None:
        return False
    call.cut = True
    return True


def _cut_tail(
    call: Call,
    admission: Admission,
    chars: int,
    translator: translate.StreamTranslator | None,
    closer: StreamCloser | None,
) -> bytes:
    """The clean end of a stream a limit cuts, in the client's dialect: stop reason length /
    max_tokens, with the usage so far."""
    tin, tout = _counts(call, admission, chars)
    usage = Usage(input_tokens=tin or int(admission.fixed[INPUT]), output_tokens=tout)
    if translator is not None:
        return translator.cut(usage)
    return closer.close(usage) if closer is not None else b""


def _restored(event: Event, renamed: dict[str, str]) -> Event:
    data = restore_event(event.name, event.data, renamed)
    return event if data is None else Event(frame(data, event.name), event.name, data)


# ------------------------------------------------------------------- models, count_tokens


async def list_models(call: Call, pool: UpstreamPool, picker: CredentialPicker) -> None:
    """``GET /models``: a logical-model route's model names; a provider's own list when it has
    one to relay, else its default model."""
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
    if kind_of(provider).lists_models:
        await relay_once(call, pool, picker, "models", {})
        return
    ids = [provider.default_model] if provider.default_model else []
    data = [
        {"id": i, "object": "model", "created": 0, "owned_by": provider.provider_type} for i in ids
    ]
    await req.respond(200, json.dumps({"object": "list", "data": data}).encode())


async def count_tokens(
    call: Call,
    pool: UpstreamPool,
    picker: CredentialPicker,
    body: JsonObj,
    target: Target,
) -> None:
    """``count_tokens``: relayed to a provider that counts, else estimated here."""
    req = call.req
    provider = target.provider
    call.target = target
    kind = kind_of(provider)
    if kind.counts_tokens:
        payload = dict(body)
        if target.upstream_model:
            payload["model"] = target.upstream_model
        headers = {"content-type": "application/json"}
        for name in wire_format(kind.chat_wire).forwarded_headers:
            if name in req.headers:
                headers[name] = req.headers[name]
        await relay_once(call, pool, picker, "count_tokens", headers, json.dumps(payload).encode())
        return
    await req.respond(200, json.dumps({"input_tokens": estimate_tokens(body)}).encode())
    call.status = 200


async def relay_once(
    call: Call,
    pool: UpstreamPool,
    picker: CredentialPicker,
    operation: str,
    headers: dict[str, str],
    data: bytes | None = None,
    *,
    url: str | None = None,
) -> None:
    """One call to the target's provider with its first key, the answer passed back unchanged
    (``models`` is a GET, ``count_tokens`` a POST of ``data``), through the provider's proxy.
    ``url``: where, when not the provider kind's URL of ``operation``."""
    req = call.req
    assert call.target is not None
    provider = call.target.provider
    kind = kind_of(provider)
    key = next(iter(picker.keys(req.snapshot, provider.id, ["provider_id"], "round_robin")))
    call.key = key
    headers = {**headers, **kind.auth_headers(provider, operation, key.value)}
    method = "GET" if data is None else "POST"
    try:
        async with pool.session(provider).request(
            method,
            url or kind.url(provider, operation, "", stream=False),
            data=data,
            headers=headers,
            timeout=pool.timeout(provider, stream=False),
            proxy=provider.network.proxy_url or None,
        ) as resp:
            limit = RESPONSE_LIMIT if resp.status < 400 else ERROR_BODY_LIMIT
            try:
                raw = await read_capped(resp, limit)
            except BodyTooLarge:
                raise Refusal(
                    502,
                    "provider_request_failed",
                    f"upstream answered {resp.status} with a body larger than "
                    f"{limit_text(limit)} (the gateway's limit)",
                ) from None
            call.status = resp.status
            ctype = resp.headers.get("content-type", "application/json").encode()
            await req.respond(resp.status, raw, ctype, passed_headers(resp))
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise Refusal(
            502,
            "provider_request_failed",
            f"upstream {provider.id} unreachable: {scrub(str(exc))}",
        ) from None
