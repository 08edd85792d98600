"""The attempt: a request's targets (candidates, in failover order) times their credentials,
tried in order, and the whole order again on a retryable failure, until one answers.

Each :class:`Attempt` is what to send (provider, wire, URL, body, headers); a
:class:`FailedAttempt` is an upstream failure kept to answer with when every attempt failed.
The upstream call is awaited here and the answer relayed (:mod:`agw.llm.relay`) from the same
frame: every resumption of a coroutine walks the whole chain of awaiting frames.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp

from agw.config.llm import Provider
from agw.errors import InvalidRequest, Refusal
from agw.llm import translate
from agw.llm.call import CLIENT_WIRE, Call
from agw.llm.credential_health import CredentialHealth
from agw.llm.observe import Observer
from agw.llm.providers import (
    ERROR_BODY_LIMIT,
    BodyTooLarge,
    CredentialPicker,
    ProviderKind,
    UpstreamPool,
    WireFormat,
    error_dialect,
    error_message,
    kind_of,
    limit_text,
    read_capped,
    wire_format,
)
from agw.llm.relay import JSON, passed_headers, relay_json, relay_stream
from agw.llm.routing import Target
from agw.logs import scrub
from agw.types import Headers, JsonObj

log = logging.getLogger(__name__)


@dataclass(slots=True)
class Attempt:
    """One upstream call to make: a target's provider with one of its credentials."""

    provider: Provider
    wire: str
    url: str
    data: bytes
    headers: dict[str, str]
    injected: bool  # the gateway asked for a usage chunk the client did not


@dataclass
class FailedAttempt:
    """An upstream attempt that failed, kept to answer with when every attempt failed."""

    status: int
    message: str
    error_type: str
    body: bytes = b""
    headers: Headers = field(default_factory=list)
    wire: str = ""
    repeatable: bool = True  # worth another round (not a timeout, not a credential cool-down)


class Forwarder:
    """Sends a request to its targets: failover over candidates and credentials, retries."""

    def __init__(
        self, pool: UpstreamPool, picker: CredentialPicker, health: CredentialHealth
    ) -> None:
        self.pool = pool
        self.picker = picker
        self.health = health

    async def forward(self, call: Call, body: JsonObj, targets: list[Target]) -> None:
        """Every credential of every target in order; when all failed with a retryable error
        other than a timeout or a credential cool-down, the whole order again, up to the primary
        provider's ``network.max_retries`` times, ``retry_delay_seconds`` apart."""
        req = call.req
        net = targets[0].provider.network
        failed: FailedAttempt | None = None
        for round_ in range(1 + net.max_retries):
            if round_:
                waited = time.perf_counter_ns()
                await asyncio.sleep(net.retry_delay_seconds)
                call.upstream_ns += time.perf_counter_ns() - waited
            failed = None
            for attempt in self._attempts(call, body, targets):
                if isinstance(attempt, FailedAttempt):
                    failed = attempt
                    continue
                failed = await self._attempt(call, attempt)
                if failed is None:
                    return
                log.info(
                    "upstream_attempt_failed",
                    extra={
                        "route_id": req.route.id,
                        "provider_id": attempt.provider.id,
                        "status": failed.status,
                        # scrubbed before it is cut: a key cut in half is no longer recognised
                        "error": scrub(failed.message)[:200],
                    },
                )
            if failed is None:
                return
            if not failed.repeatable:
                break
        assert failed is not None
        await answer_failed(call, failed)

    def _attempts(
        self, call: Call, body: JsonObj, targets: list[Target]
    ) -> Iterator[FailedAttempt | Attempt]:
        """One round: each credential of each target, as what to send (a plain generator, not
        a coroutine, so the upstream call is awaited one frame up). A credential cooling down
        is a FailedAttempt to answer with if nothing else works."""
        req = call.req
        client_wire = CLIENT_WIRE.get(call.operation)
        for target in targets:
            provider = target.provider
            kind = kind_of(provider)
            wire = kind.wire_for(call.operation)
            if wire is None:
                raise Refusal(
                    400,
                    "protocol_validation_failed",
                    f"provider type {provider.provider_type} has no {call.operation} API",
                )
            fmt = wire_format(wire)
            try:
                data, injected = _payload(call, body, target, kind, wire, fmt)
            except InvalidRequest as exc:
                raise Refusal(400, "protocol_validation_failed", exc.message) from None
            url = kind.url(provider, wire, target.upstream_model, stream=call.stream)
            own = wire == client_wire
            if own and req.query and fmt.forwards_query:
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
                    yield FailedAttempt(
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
                if own:
                    for name in fmt.forwarded_headers:
                        if name in req.headers:
                            headers[name] = req.headers[name]
                for name, value in kind.request_headers.items():
                    headers.setdefault(name, value)
                headers.update(kind.auth_headers(provider, wire, key.value))
                headers["traceparent"] = f"00-{req.trace.trace_id}-{req.trace.span_id}-01"
                yield Attempt(provider, wire, url, data, headers, injected)

    async def _attempt(self, call: Call, attempt: Attempt) -> FailedAttempt | None:
        """One upstream call. Returns a FailedAttempt worth retrying elsewhere, or None when
        the client has its answer (success, or an upstream error that is not retryable)."""
        provider = attempt.provider
        session = self.pool.session(provider)
        timeout = self.pool.timeout(provider, stream=call.stream)
        proxy = provider.network.proxy_url or None
        sent = time.perf_counter_ns()
        try:
            resp = await session.post(
                attempt.url,
                data=attempt.data,
                headers=attempt.headers,
                timeout=timeout,
                proxy=proxy,
            )
        except TimeoutError:
            call.upstream_ns += time.perf_counter_ns() - sent
            return FailedAttempt(
                504,
                f"upstream {provider.id} timed out",
                "provider_request_failed",
                repeatable=False,
            )
        except aiohttp.ClientError as exc:
            call.upstream_ns += time.perf_counter_ns() - sent
            # scrubbed: aiohttp's errors quote the URL (an invalid one) or the proxy's (a
            # refused CONNECT), credentials included, and this message goes to the client
            return FailedAttempt(
                502,
                f"upstream {provider.id} unreachable: {scrub(str(exc))}",
                "provider_request_failed",
            )
        call.upstream_ns += time.perf_counter_ns() - sent
        async with resp:
            if resp.status >= 400:
                failed = await self._failed(call, resp, attempt.wire)
                if resp.status == 429 or resp.status >= 500:
                    return failed
                await answer_failed(call, failed)
                return None
            if call.key is not None and call.key.credential_id:
                self.health.succeeded(call.key.credential_id)
            observer = Observer(attempt.wire)
            call.observer = observer
            if call.stream:
                await relay_stream(call, resp, attempt.wire, observer, attempt.injected)
            else:
                await relay_json(call, resp, attempt.wire, observer)
            return None

    async def _failed(self, call: Call, resp: aiohttp.ClientResponse, wire: str) -> FailedAttempt:
        """An upstream error answer, read (within its limit) and charged to the credential."""
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
        message = message or error_message(raw) or f"upstream answered {resp.status}"
        if call.key is not None and call.key.credential_id:
            self.health.failed(
                call.key.credential_id,
                resp.status,
                scrub(message),  # shown by GET /admin/credentials; it may echo a key
                resp.headers.get("retry-after"),
            )
        return FailedAttempt(
            resp.status,
            message,
            "provider_request_failed",
            raw,
            [
                (b"content-type", resp.headers.get("content-type", "application/json").encode()),
                *passed_headers(resp),
            ],
            wire,
        )


def _payload(
    call: Call,
    body: JsonObj,
    target: Target,
    kind: ProviderKind,
    wire: str,
    fmt: WireFormat,
) -> tuple[bytes, bool]:
    """The upstream body, and whether we asked for a usage chunk the client did not.
    When nothing needs editing, the client's own bytes go upstream as they came."""
    client_wire = CLIENT_WIRE.get(call.operation, "embeddings")
    provider = target.provider
    own = client_wire == wire
    if (
        own
        and call.raw
        and body.get("model") == target.upstream_model
        and (not call.stream or fmt.stream_passes(body))
        and not kind.needs_shaping(provider, wire)
    ):
        return call.raw, False
    out = dict(body) if own else translate.translate_request(body, client_wire, wire)
    injected = fmt.prepare(out, target.upstream_model, stream=call.stream, own=own)
    call.renamed = kind.shape(provider, wire, out)
    return json.dumps(out).encode(), injected


async def answer_failed(call: Call, failed: FailedAttempt) -> None:
    """Answer with an upstream failure: unchanged when the client speaks the provider's
    format, else its status and message in the client's dialect."""
    req = call.req
    call.status, call.error_type = failed.status, failed.error_type
    client_wire = CLIENT_WIRE.get(call.operation, "embeddings")
    if failed.body and failed.wire == client_wire:
        ctype = next((v for k, v in failed.headers if k == b"content-type"), JSON)
        rest = [(k, v) for k, v in failed.headers if k != b"content-type"]
        await req.respond(failed.status, failed.body, ctype, rest)
        return
    await req.respond(
        failed.status, error_dialect(req.route.protocol).body(failed.status, failed.message)
    )
