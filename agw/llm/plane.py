"""The LLM plane: one matched request -> provider(s) -> the answer, and one usage event.

:meth:`LlmPlane.handle` checks the path, method and body, resolves the route's targets
(:mod:`agw.llm.routing`) and awaits the work: the attempts over targets and credentials
(:mod:`agw.llm.forward`), whose answer is relayed as it came or translated
(:mod:`agw.llm.relay`). Gemini's paths, which carry the model in the URL, are read by
:mod:`agw.llm.gemini_ingress`. Every "no", the dispatcher's or the plane's own, is an
:class:`agw.errors.Refusal` rendered in the caller's dialect (OpenAI error object, Anthropic
envelope or Google's error body); every request, refusals included, records one
:class:`LlmUsageEvent`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Coroutine
from typing import Any

from agw import jsonfast
from agw.config import families as f
from agw.errors import PayloadTooLarge, Refusal
from agw.llm import gemini_ingress as gemini
from agw.llm.call import CLIENT_WIRE, Call
from agw.llm.content import Completion, prompt_of
from agw.llm.credential_health import CredentialHealth
from agw.llm.discovery import ModelCatalog
from agw.llm.forward import Forwarder
from agw.llm.observe import estimate_output_tokens, estimate_tokens, request_tools
from agw.llm.pricing import Price, Pricer
from agw.llm.providers import CredentialPicker, UpstreamPool, error_dialect
from agw.llm.relay import count_tokens, list_models
from agw.llm.routing import Target, resolve
from agw.policy.authz import authorize, authorize_session
from agw.policy.limit_table import sizes
from agw.policy.limit_types import COST, NO_CAP, Charge
from agw.policy.limits import Announce, Limiter, matching
from agw.request import ClientGone, DisconnectWatch, Request
from agw.types import JsonObj
from agw.usage.events import CostSource, LlmUsageEvent, UsageSource
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


class LlmPlane:
    edge_always = False  # a keyed LLM route cannot be used by a page: it lacks the key

    def __init__(
        self,
        recorder: UsageRecorder | None,
        *,
        trace_content: bool = False,
        limiter: Limiter | None = None,
    ) -> None:
        """Sessions are attributed by the dispatcher (``req.session_id``, ``req.acp_session_id``)
        before the plane runs. ``limiter``: the gateway's limit counters (default: its own)."""
        self.trace_content = trace_content  # keep prompts and completions for the traces
        self.pool = UpstreamPool()
        self.picker = CredentialPicker()
        self.recorder = recorder
        self.catalog = ModelCatalog(self.pool, self.picker)
        self.health = CredentialHealth()
        self.forwarder = Forwarder(self.pool, self.picker, self.health)
        self.pricer = Pricer()
        self.limiter = limiter or Limiter()

    async def close(self) -> None:
        await self.pool.close()

    # --------------------------------------------------------------------------------- entry

    async def handle(self, req: Request, refusal: Refusal | None = None) -> None:
        call = Call(req)
        if self.trace_content:
            call.completion = Completion()
        try:
            if refusal is not None:
                raise refusal
            if self._probe(call):
                await req.respond(200, b"")
                return
            if req.method == "POST" and (mime := req.media_type) != "application/json":
                raise _not_json(mime)
            try:
                raw = await req.read_body(BODY_LIMIT)
            except PayloadTooLarge as exc:
                raise Refusal(413, "protocol_validation_failed", exc.message) from None
            work = self._work(call, raw)
            # The work is awaited here, not in a helper: every resumption of a coroutine walks
            # the whole chain of awaiting frames, and on the hot path each level is measurable.
            # Limits admit it first (step 3), before it starts.
            async with DisconnectWatch(req) as watch:
                # a whole (non-streamed) answer is recorded just before it goes out: its row
                # is in the usage spool before the client can have it (kill -9)
                req.on_answer = lambda: None if watch.gone else self._record(call)
                if call.charges:
                    try:
                        later = self._admit(call, call.charges)
                        if later is not None:
                            await later
                    except BaseException:
                        work.close()
                        raise
                await work
            if watch.gone:
                call.status, call.error_type, call.finalized = 499, "client_cancelled", False
        except Refusal as exc:
            call.status, call.error_type = exc.status, exc.code
            if not req.started:
                await self.render(req, exc)
        except ClientGone:
            call.status, call.error_type, call.finalized = 499, "client_cancelled", False
        except Exception:
            log.exception("llm_request_failed", extra={"route_id": req.route.id})
            call.status, call.error_type = 500, "internal_error"
            if not req.started:
                await req.respond(
                    500, error_dialect(req.route.protocol).body(500, "internal gateway error")
                )
        finally:
            self._record(call)

    @staticmethod
    async def render(req: Request, refusal: Refusal) -> None:
        """A refusal in the caller's dialect: the OpenAI error object, Anthropic's envelope on
        the ``anthropic`` and ``cc`` surfaces, Google's error body on ``gemini``."""
        extra = refusal.detail if isinstance(refusal.detail, dict) else None
        code = "rate_limit_exceeded" if refusal.status == 429 else None
        await req.respond(
            refusal.status,
            error_dialect(req.route.protocol).body(refusal.status, refusal.message, code, extra),
            headers=refusal.answer_headers() + req.close_if_unread(),
        )

    def _probe(self, call: Call) -> bool:
        """Checks the path and method; True for Claude Code's ``HEAD /`` reachability probe."""
        req = call.req
        protocol = req.route.protocol
        if protocol == "cc" and req.method == "HEAD" and req.path in ("/", ""):
            call.operation, call.status = "probe", 200
            return True
        if protocol == "gemini":
            gemini.route(call)
            return False
        paths = _OPENAI_PATHS if protocol == "openai" else _ANTHROPIC_PATHS
        operation = paths.get(req.path)
        if operation is None:
            raise Refusal(404, "route_not_found", f"no {protocol} endpoint at {req.path}")
        call.operation = operation
        want = "GET" if operation == "models" else "POST"
        if req.method != want:
            raise Refusal(
                405,
                "protocol_validation_failed",
                f"method {req.method} not allowed on {req.path}",
            )
        return False

    def _work(self, call: Call, raw: bytes) -> Coroutine[Any, Any, None]:
        """Validates the request and resolves its targets; the coroutine that answers it."""
        req = call.req
        operation = call.operation
        if operation == "models":
            # a listing uses no model: only the deny rules hold it (docs/security.md)
            if req.route.rules is not None and (refusal := authorize_session(req)):
                raise refusal
            if req.route.protocol == "gemini":
                return gemini.models(call, self.pool, self.picker, self.catalog)
            return list_models(call, self.pool, self.picker)
        body = _parse_body(raw)
        if req.route.protocol == "gemini":  # the model and streaming are in the URL
            model, raw = gemini.request_of(call, body, raw)
            stream = call.stream
        else:
            model = body.get("model", "")
            if not isinstance(model, str):
                raise Refusal(400, "protocol_validation_failed", "model must be a string")
            stream = body.get("stream", False)
            if not isinstance(stream, bool):
                raise Refusal(400, "protocol_validation_failed", "stream must be a boolean")
        call.stream = stream and operation in CLIENT_WIRE
        opts = body.get("stream_options")
        call.client_wants_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        call.request_tools = request_tools(body, CLIENT_WIRE.get(operation, "chat"))
        targets = resolve(
            req.snapshot, req.route.config, model, stream=call.stream, catalog=self.catalog
        )
        if req.route.rules is not None:  # authorization, before any upstream call
            first = targets[0]
            llm = {
                "model": first.logical_model or first.upstream_model,
                "provider_id": first.provider.id,
                "stream": call.stream,
            }
            if refusal := authorize(req, llm=llm):
                call.target = first  # the row says which provider and model were refused
                raise refusal
        if operation == "count_tokens":
            counter = gemini.count_tokens if req.route.protocol == "gemini" else count_tokens
            return counter(call, self.pool, self.picker, body, targets[0])
        if not targets[0].upstream_model:
            raise Refusal(
                400,
                "protocol_validation_failed",
                "model is required (the route's provider has no default_model)",
            )
        call.body, call.raw = body, raw
        limits = req.snapshot.limits.by_route.get(req.route.id)
        if limits is not None:
            first = targets[0]
            charges = matching(
                req,
                req.snapshot.limits,
                model=first.logical_model,
                upstream_model=first.upstream_model,
                provider_id=first.provider.id,
                plane=(
                    {
                        "llm": {
                            "model": first.logical_model or first.upstream_model,
                            "provider_id": first.provider.id,
                            "stream": call.stream,
                        }
                    }
                    if limits.when
                    else None
                ),
            )
            if charges:  # admitted by handle, first
                call.charges, call.target, call.limits = charges, first, limits
        return self.forwarder.forward(call, body, targets)

    def _admit(self, call: Call, charges: list[Charge]) -> Coroutine[Any, Any, None] | None:
        """Admission against the limits that apply (docs/limits.md); a coroutine to await
        where the limit backend must (a shared one), else None: admitted. What a request
        reserves: its estimated input (the body's bytes / 4) at the model's input price, plus
        its output cap (``max_tokens``, else the limits' ``default_output_tokens``) at the
        output price; a budget that cannot pay for the cap but for ``min_output_tokens`` lowers
        ``max_tokens``."""
        req, body, target, limits = call.req, call.body, call.target, call.limits
        assert body is not None and target is not None and limits is not None
        want = 0
        wire = CLIENT_WIRE.get(call.operation)
        field = ""
        if len(charges) == len(limits.limits):  # all of the route's: known before the request
            sized, dollars, default_output = limits.sized, limits.dollars, limits.default_output
            announce: Announce | None = limits.announce
        else:
            sized, dollars, default_output = sizes([c.spec for c in charges])
            announce = None
        if sized:
            # the input estimate: the body's bytes / 4 as the client sent it (JSON syntax
            # included: an over-estimate of the text, at no cost per message)
            raw = call.raw
            est_in = float(len(raw) // 4 or 1) if raw else float(estimate_tokens(body))
            in_price = out_price = 0.0
            if dollars:
                price = self._price(call, target)
                if price is None:
                    _unpriced(req, target, charges)
                else:
                    in_price, out_price = price.input / 1e6, price.output / 1e6
            fixed = [est_in * in_price, est_in, est_in, 0.0, 1.0, 1.0]
            if wire is not None:
                field, asked = max_tokens_of(body, wire)
                want = asked if asked is not None else default_output
                per_output = [out_price, 1.0, 0.0, 1.0, 0.0, 0.0]
            else:
                per_output = [0.0] * 6
        else:  # requests and requests in flight only
            fixed, per_output = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0], [0.0] * 6
        admission = self.limiter.admit_now(req, charges, fixed, per_output, want, announce)
        if admission is None:
            return self._admit_later(call, charges, fixed, per_output, want, announce, field)
        if admission.output < want:
            self._clamp(call, admission.output, field)
        return None

    async def _admit_later(
        self,
        call: Call,
        charges: list[Charge],
        fixed: list[float],
        per_output: list[float],
        want: int,
        announce: Announce | None,
        field: str,
    ) -> None:
        admission = await self.limiter.admit(call.req, charges, fixed, per_output, want, announce)
        if admission.output < want:
            self._clamp(call, admission.output, field)

    @staticmethod
    def _clamp(call: Call, output: int, field: str) -> None:
        """The clamp (said in the x-agw-max-tokens header): ``output`` tokens at most."""
        assert call.body is not None
        _cap_holder(call.body, field, create=True)[_leaf(field)] = output
        call.raw = b""  # the body goes up re-encoded

    def _price(self, call: Call, target: Target) -> Price | None:
        """The price of ``target``'s model (its managed model's, else the catalog's), once
        per request: the row's cost reuses it."""
        if call.price_of is not target:
            managed = call.req.snapshot.state.get(
                f.MANAGED_MODEL, f"{target.provider.id}/{target.upstream_model}"
            )
            call.price, call.cost_source = self.pricer.price(
                target.provider.provider_type,
                target.upstream_model,
                managed.obj.pricing if managed is not None else None,
            )
            call.price_of = target
        return call.price

    # --------------------------------------------------------------------------------- usage

    def _record(self, call: Call) -> None:
        if call.recorded:
            return
        call.recorded = True
        req = call.req
        obs = call.observer
        usage = obs.usage if obs is not None and obs.usage_seen else None
        source: UsageSource
        if obs is not None and usage is not None and (obs.finished or obs.final_usage):
            source, tin, tout = "provider", usage.input_tokens, usage.output_tokens
        elif call.body is not None and call.target is not None and call.status:
            # The answer's own usage never came (a cut stream, a client that left): the input
            # the provider reported if any, else estimated; the output estimated from what the
            # client received (or what the provider had counted, when that is more).
            source = "estimated"
            tin = usage.input_tokens if usage is not None else 0
            tin = tin or estimate_tokens(call.body)
            if call.relayed is not None:
                tout = estimate_output_tokens(call.relayed, call.relayed_size, stream=True)
            else:
                tout = estimate_output_tokens([call.answer], len(call.answer), stream=False)
            tout = max(tout, usage.output_tokens if usage is not None else 0)
        else:
            source, tin, tout = "missing", 0, 0
        status = call.status or req.status or 500
        target = call.target
        admission = req.admission
        key = call.key
        cached = usage.cached_input_tokens if usage else 0
        written = usage.cache_creation_input_tokens if usage else 0
        reasoning = usage.reasoning_tokens if usage else 0
        cost: float | None = None
        cost_source: CostSource | None = None
        if target is not None and target.upstream_model:
            price = self._price(call, target)
            cost_source = call.cost_source
            if price is not None:
                cost = price.cost(tin, tout, cached, written, reasoning)
        if admission is not None:
            admission.settle(cost or 0.0, tin, tout)
            if admission.action is not None:
                req.limit_id, req.limit_action = admission.limit_id, admission.action
        if self.recorder is None:
            return
        event = LlmUsageEvent(
            **req.usage_head(call.started_ms, status, call.error_type),
            llm_api=req.route.protocol,
            api_operation=call.operation or None,
            provider_id=target.provider.id if target else None,
            provider_type=target.provider.provider_type if target else None,
            logical_model=(target.logical_model or None) if target else None,
            upstream_model=(target.upstream_model or None) if target else None,
            credential_source=key.source if key else None,
            credential_id=(key.credential_id or None) if key else None,
            stream=call.stream,
            input_tokens=tin,
            output_tokens=tout,
            total_tokens=tin + tout,
            usage_finalized=call.finalized and (obs.finished if obs else True),
            request_tool_count=len(call.request_tools),
            request_tool_names=call.request_tools,
            tool_call_count=len(obs.tool_names) if obs else 0,
            tool_names=list(obs.tool_names) if obs else [],
            usage_source=source,
            cached_input_tokens=cached,
            cache_creation_input_tokens=written,
            reasoning_tokens=reasoning,
            acp_session_id=req.acp_session_id,
            cost_usd=cost,
            cost_source=cost_source,
            overhead_ms=max(0, time.perf_counter_ns() - call.t0 - call.upstream_ns) / 1e6,
            ttft_ms=(call.first_byte_ns - call.t0) / 1e6 if call.first_byte_ns else None,
        )
        if call.completion is not None:
            event.trace_content = {
                "input": prompt_of(call.body),
                "output": call.completion.text(),
            }
        self.recorder.emit(event)


_MAX_FIELDS = {
    "chat": ("max_completion_tokens", "max_tokens"),
    "messages": ("max_tokens",),
    "responses": ("max_output_tokens",),
    "gemini": ("generationConfig.maxOutputTokens",),
}


def max_tokens_of(body: JsonObj, wire: str) -> tuple[str, int | None]:
    """The request's output cap: the field it is in (or would be set in; a dotted name is
    nested) and its value (None when the request sets none: the provider's default applies)."""
    fields = _MAX_FIELDS.get(wire, ())
    for name in fields:
        value = body.get(name) if "." not in name else _cap_holder(body, name).get(_leaf(name))
        if value is None:
            continue
        if type(value) is not int or value < 1:  # JSON's integers are ints; a bool is not one
            raise Refusal(400, "protocol_validation_failed", f"{name} must be a positive integer")
        return name, value
    return (fields[-1] if fields else ""), None


def _cap_holder(body: JsonObj, name: str, *, create: bool = False) -> JsonObj:
    """The object that holds the output cap ``name``: the body, or for a dotted name the
    object it names (made when ``create`` and missing)."""
    outer, _, _ = name.rpartition(".")
    if not outer:
        return body
    inner = body.get(outer)
    if isinstance(inner, dict):
        return inner
    if inner is not None:
        raise Refusal(400, "protocol_validation_failed", f"{outer} must be an object")
    if create:
        inner = body[outer] = {}
        return inner
    return {}


def _leaf(name: str) -> str:
    return name.rpartition(".")[2]


def _unpriced(req: Request, target: Target, charges: list[Charge]) -> None:
    """A dollar limit applies but the model has no price: refused unless every such limit
    says ``unpriced: allow`` (then its calls count 0 dollars)."""
    for charge in charges:
        spec = charge.spec
        if spec.caps[COST] != NO_CAP and spec.enforce and spec.unpriced == "deny":
            req.limit_id, req.limit_action = spec.id, "refused"
            raise Refusal(
                403,
                "limit_unpriced",
                f'limit "{spec.id}" counts dollars, and model '
                f'"{target.upstream_model}" of provider "{target.provider.id}" has no price: '
                "give its managed model a pricing, or set the limit's unpriced: allow",
            )


def _not_json(mime: str) -> Refusal:
    """LLM POST bodies are JSON, and say so: every SDK and agent sends ``application/json``.
    What a browser may send cross-site without a CORS preflight (``text/plain``, forms, no
    type at all) is refused, so a web page cannot make the operator's browser spend an open
    route's credits (docs/security.md). ``mime``: :attr:`Request.media_type`, not JSON."""
    return Refusal(
        415,
        "protocol_validation_failed",
        f"Content-Type must be application/json, not {mime[:100] or 'none'}",
    )


def _parse_body(raw: bytes) -> JsonObj:
    try:
        body = jsonfast.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise Refusal(400, "protocol_validation_failed", f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise Refusal(400, "protocol_validation_failed", "request body must be a JSON object")
    return body
