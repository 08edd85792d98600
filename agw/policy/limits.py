"""Limits admission: step 3 of the pipeline for requests, tokens, dollars and requests in flight
(docs/limits.md).

The snapshot compiles the ``limits`` family into a :class:`LimitTable` (each route's candidate
limits, found once per config). Per request, a plane asks :func:`matching` which limits apply
(the static ``match`` lists, then ``when``) and what each counts against (the subject's value),
then :meth:`Limiter.admit` reserves what the request may take on every counter at once
(agw/policy/limit_backend.py) or raises the 429 :class:`Refusal`. The :class:`Admission` it
returns carries the answer's headers (``RateLimit-Policy``, ``RateLimit``, the soft warning,
the clamp), lets a stream take more as it flows (:meth:`Admission.flow`), and settles to what
the answer really used (:meth:`Admission.settle`), on success, error or cancellation alike.

A route no limit names costs one dictionary lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from agw.config import families as f
from agw.config.limits import Limit, window_seconds
from agw.errors import Problem, Refusal
from agw.policy.limit_backend import (
    CONCURRENT,
    COST,
    INPUT,
    METERS,
    NO_CAP,
    OUTPUT,
    REQUESTS,
    TOKENS,
    Charge,
    Counter,
    Denial,
    Grant,
    InProcessBackend,
    LimitBackend,
    LimitSpec,
    Plan,
    Vector,
    share,
)
from agw.policy.limit_backend import spec as limit_spec
from agw.policy.rules import RuleError, RuleSet, compile_rules
from agw.policy.variables import variables_of
from agw.types import Headers

if TYPE_CHECKING:
    from agw.request import Request
    from agw.runtime.state import ConfigState
    from agw.store.engine import Store

log = logging.getLogger(__name__)

# how a meter is named to clients: RateLimit-Policy's quota unit and the error body
_UNITS = (
    "usd-micros",
    "tokens",
    "input-tokens",
    "output-tokens",
    "requests",
    "concurrent-requests",
)
_SCALE = (1_000_000, 1, 1, 1, 1, 1)  # quotas are integers: dollars in millionths
SAVE_EVERY_S = 2.0
EVICT_EVERY = 30  # saves: ended windows are forgotten about once a minute
FLOW_SLACK_TOKENS = 64  # a stream past its hold takes this many output tokens more at once


@dataclass(frozen=True, slots=True)
class CompiledLimit:
    spec: LimitSpec
    subject: str
    key_ids: frozenset[str]
    key_tags: frozenset[str]
    models: frozenset[str]
    provider_ids: frozenset[str]
    users: frozenset[str]
    orgs: frozenset[str]
    when: RuleSet | None


@dataclass(frozen=True, slots=True)
class LimitTable:
    by_route: Mapping[str, tuple[CompiledLimit, ...]]
    specs: Mapping[str, LimitSpec]


EMPTY_TABLE = LimitTable({}, {})


def _spec(lim: Limit) -> LimitSpec:
    caps = [NO_CAP] * 6
    if lim.cost_usd is not None:
        caps[COST] = lim.cost_usd
    if lim.tokens is not None:
        for m, value in ((TOKENS, lim.tokens.total), (INPUT, lim.tokens.input)):
            if value is not None:
                caps[m] = float(value)
        if lim.tokens.output is not None:
            caps[OUTPUT] = float(lim.tokens.output)
    if lim.requests is not None:
        caps[REQUESTS] = float(lim.requests)
    if lim.concurrent is not None:
        caps[CONCURRENT] = float(lim.concurrent)
    spec = limit_spec(
        lim.id,
        tuple(caps),
        lim.window,
        window_seconds(lim.window),
        lim.enforce,
        lim.on_exceed,
        lim.min_output_tokens,
        lim.warn_at,
    )
    return replace(
        spec,
        policy=", ".join(_policy_item(spec, m) for m in spec.capped),
        states=tuple(
            (m, f"{_item_name(spec, m)};r=", _SCALE[m], m != CONCURRENT) for m in spec.capped
        ),
        unpriced=lim.unpriced or "deny",
        default_output_tokens=lim.default_output_tokens,
        on_failure=lim.on_backend_failure or ("closed" if lim.cost_usd is not None else "open"),
    )


def compile_limits(state: ConfigState, problems: list[Problem]) -> LimitTable:
    """Each enabled limit, compiled, under each route it may apply to."""
    routes: list[tuple[str, str]] = []
    for family in (f.LLM_ROUTE, f.MCP_ROUTE, f.ACP_ROUTE, f.A2A_ROUTE):
        routes += [(rid, family.route_kind or "") for rid, _ in state.records(family)]
    by_route: dict[str, list[CompiledLimit]] = {}
    specs: dict[str, LimitSpec] = {}
    for lid, rec in state.records(f.LIMIT):
        lim: Limit = rec.obj
        if lim.disabled:
            continue
        when: RuleSet | None = None
        if lim.when:
            try:
                when = compile_rules([lim.when], [])
            except RuleError as exc:
                problems.append(Problem(f'{f.LIMIT.name} "{lid}".when', exc.message))
                continue
        spec = _spec(lim)
        specs[lid] = spec
        m = lim.match
        compiled = CompiledLimit(
            spec,
            lim.subject,
            frozenset(m.key_ids),
            frozenset(m.key_tags),
            frozenset(m.models),
            frozenset(m.provider_ids),
            frozenset(m.users),
            frozenset(m.orgs),
            when,
        )
        kinds = set(m.route_kinds or ("llm", "mcp", "acp", "a2a"))
        if lim.subject == "model" or m.models or m.provider_ids:
            kinds &= {"llm"}  # only an LLM request has a model or a provider
            if not kinds:
                problems.append(
                    Problem(
                        f'{f.LIMIT.name} "{lid}".match',
                        "subject model, match.models and match.provider_ids apply to LLM "
                        "routes only, and match.route_kinds names none",
                    )
                )
                continue
        for rid, kind in routes:
            if m.route_ids and rid not in m.route_ids:
                continue
            if kinds and kind not in kinds:
                continue
            by_route.setdefault(rid, []).append(compiled)
    return LimitTable({rid: tuple(v) for rid, v in by_route.items()}, specs)


# ------------------------------------------------------------------------------ matching


def matching(
    req: Request,
    table: LimitTable,
    *,
    model: str = "",
    upstream_model: str = "",
    provider_id: str = "",
    plane: Mapping[str, Mapping[str, object]] | None = None,
) -> list[Charge]:
    """The limits that apply to ``req``, each with its subject's value (a :class:`Charge`).
    ``model`` and ``upstream_model``: the LLM request's logical and upstream model (either
    matches ``match.models``); ``plane``: the plane's CEL variable for ``when`` (``llm=...``)."""
    candidates = table.by_route.get(req.route.id)
    if not candidates:
        return []
    principal = req.principal
    key_id = principal.key_id if principal is not None else None
    user = principal.user if principal is not None else None
    org = principal.org if principal is not None else None
    out: list[Charge] = []
    for lim in candidates:
        if lim.key_ids and key_id not in lim.key_ids:
            continue
        if lim.key_tags:
            rec = req.snapshot.state.get(f.VIRTUAL_KEY, key_id) if key_id else None
            if rec is None or rec.obj.tag not in lim.key_tags:
                continue
        if lim.models and model not in lim.models and upstream_model not in lim.models:
            continue
        if lim.provider_ids and provider_id not in lim.provider_ids:
            continue
        if lim.users and user not in lim.users:
            continue
        if lim.orgs and org not in lim.orgs:
            continue
        subject = lim.subject
        value: str | None
        if subject == "key":
            value = key_id
        elif subject == "user":
            value = user
        elif subject == "org":
            value = org
        elif subject == "route":
            value = req.route.id
        elif subject == "model":
            value = model or upstream_model or None
        elif subject == "session":
            sid = req.session_id
            value = f"{req.owner_id or '-'}/{sid}" if sid else None
        else:
            value = "*"
        if value is None:
            continue
        if lim.when is not None and not _when(req, lim.when, plane or {}):
            continue
        out.append(Charge(lim.spec, value))
    return out


def _when(req: Request, rules: RuleSet, plane: Mapping[str, Mapping[str, object]]) -> bool:
    return rules.allows(variables_of(req, rules, dict(plane)))


# ------------------------------------------------------------------------------ admission


class Admission:
    """One admitted request's hold on its counters (see the module docstring)."""

    __slots__ = ("_backend", "action", "grant", "headers", "limit_id", "plan")

    def __init__(self, backend: LimitBackend, plan: Plan, grant: Grant, headers: Headers) -> None:
        self._backend = backend
        self.plan = plan
        self.grant = grant
        self.headers = headers
        # what the usage row says: the limit that acted and how (docs/limits.md)
        self.action: str | None = None
        self.limit_id: str | None = None
        if grant.clamped_by is not None:
            self.action, self.limit_id = "clamped", grant.clamped_by
        elif grant.shadow is not None:
            self.action, self.limit_id = "shadow", grant.shadow

    @property
    def metered(self) -> bool:
        """Whether a limit of this request counts dollars or tokens: its stream is metered."""
        return any(charge.spec.sized for charge in self.plan.charges)

    @property
    def can_cut(self) -> bool:
        """Whether a limit of this request ends its stream at the cap (``on_exceed: cut``)."""
        return any(c.spec.enforce and c.spec.on_exceed == "cut" for c in self.plan.charges)

    @property
    def output(self) -> int:
        """Output tokens the request may produce (lower than asked when clamped)."""
        return self.grant.output

    def need(self, input_tokens: int, output_tokens: int) -> Vector | None:
        """A stream so far (``input_tokens`` as reported, 0 while unknown): None while what it
        used is within what it holds, else what it should take more (with some slack)."""
        plan, hold = self.plan, self.grant.held
        per, fixed = plan.per_output, plan.fixed
        est_in = fixed[INPUT]
        extra_in = input_tokens - est_in if input_tokens > est_in else 0.0
        need: Vector | None = None
        for m in (COST, TOKENS, INPUT, OUTPUT):
            used = fixed[m] + output_tokens * per[m]
            if extra_in and est_in and m != OUTPUT:
                used += extra_in * fixed[m] / est_in
            if used > hold[m] + 1e-12:
                if need is None:
                    need = [0.0] * 6
                need[m] = used - hold[m] + FLOW_SLACK_TOKENS * per[m]
        return need

    async def flow(self, need: Vector) -> Charge | None:
        """Takes ``need`` (from :meth:`need`) from the counters. Returns the ``cut`` charge
        that cannot pay (the stream is to end now), else None."""
        per = self.plan.per_output
        ext = await self._backend.extend(self.grant, need)
        if ext.cut_by is not None:  # near the cap: take only what was used, without slack
            exact = [
                n - FLOW_SLACK_TOKENS * p if n else 0.0 for n, p in zip(need, per, strict=True)
            ]
            ext = await self._backend.extend(self.grant, exact)
        if ext.cut_by is not None:
            self.action, self.limit_id = "cut", ext.cut_by.spec.id
            return ext.cut_by
        if ext.exceeded and self.action not in ("cut", "exceeded"):
            self.action, self.limit_id = "exceeded", ext.exceeded[0]
        return None

    def settle(self, cost_usd: float, input_tokens: int, output_tokens: int) -> None:
        """The answer ended (any way it ends): drop the hold, count what was used."""
        tin, tout = float(input_tokens), float(output_tokens)
        actual = [cost_usd, tin + tout, tin, tout, 1.0, 0.0]
        hold = self.grant.held
        if self.action is None and (
            actual[COST] > hold[COST]
            or actual[TOKENS] > hold[TOKENS]
            or actual[INPUT] > hold[INPUT]
            or actual[OUTPUT] > hold[OUTPUT]
        ):  # the answer used more than it held: did it take a counter past its cap?
            for charge, counter in zip(self.grant.charges, self.grant.counters, strict=True):
                spec = charge.spec
                if spec.enforce and _past(spec, counter, actual, self.grant.held):
                    self.action, self.limit_id = "exceeded", spec.id
                    break
        self._backend.settle(self.grant, actual)


def _past(spec: LimitSpec, counter: Counter, actual: Vector, hold: Vector) -> bool:
    """Whether settling ``actual`` (more than the request held) takes the counter past a cap."""
    for m in (COST, TOKENS, INPUT, OUTPUT):
        cap = spec.caps[m]
        if cap == NO_CAP or actual[m] <= hold[m] + 1e-9:
            continue
        if counter.used[m] + counter.held[m] - hold[m] + actual[m] > cap + 1e-9:
            return True
    return False


class Limiter:
    """Admission against the gateway's limit counters, and their persistence: in-process ones
    are loaded from the store at start-up, saved every :data:`SAVE_EVERY_S` and on shutdown; a
    shared backend (agw/policy/limit_redis.py) keeps its own."""

    def __init__(self, db: Store | None = None, backend: LimitBackend | None = None) -> None:
        backend = backend or InProcessBackend()
        self.backend: LimitBackend = backend
        saved = isinstance(backend, InProcessBackend) and backend.saved_by_limiter
        self._local = backend if saved and isinstance(backend, InProcessBackend) else None
        self._db = db if self._local is not None else None
        self._saver: asyncio.Task[None] | None = None
        self._specs: Mapping[str, LimitSpec] = {}
        self._started = False

    # ------------------------------------------------------------------------- lifecycle

    async def start(self, table: LimitTable) -> None:
        """Load the saved counters and start saving (once; later calls do nothing)."""
        from agw.store import limit_repo

        if self._started:
            return
        self._started = True
        self._specs = table.specs
        db, local = self._db, self._local
        if db is None or local is None:
            return
        rows = await limit_repo.load_counters(db)
        n = local.load(rows, dict(table.specs))
        if n:
            log.info("limit_counters_loaded", extra={"count": n})
        self._saver = asyncio.get_running_loop().create_task(self._save_loop())

    def sync(self, table: LimitTable) -> None:
        """A new config: forget the counters of limits that are gone or disabled."""
        gone = set(self._specs) - set(table.specs)
        self._specs = table.specs
        if gone:
            self.backend.forget(gone)

    async def save(self) -> None:
        from agw.store import limit_repo

        if self._db is None or self._local is None:
            return
        rows, deleted = self._local.take_changes()
        if rows or deleted:
            await limit_repo.save_counters(self._db, rows, deleted)

    async def _save_loop(self) -> None:
        rounds = 0
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            rounds += 1
            if rounds % EVICT_EVERY == 0 and self._local is not None:
                self._local.evict()
            try:
                await self.save()
            except Exception:
                log.exception("limit_counters_save_failed")

    async def close(self) -> None:
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saver
            self._saver = None
        try:
            await self.save()
        except Exception:
            log.exception("limit_counters_save_failed")
        await self.backend.close()

    # ---------------------------------------------------------------------------- admit

    async def admit(
        self,
        req: Request,
        charges: list[Charge],
        fixed: Vector,
        per_output: Vector,
        want_output: int,
    ) -> Admission:
        """Reserve on every matched limit at once, or raise the 429 refusal (recorded on the
        request: ``req.limit_id``, ``req.limit_action``)."""
        plan = Plan(charges, fixed, per_output, want_output)
        verdict = await self.backend.reserve(plan)
        if isinstance(verdict, Denial):
            req.limit_id, req.limit_action = verdict.spec.id, "refused"
            raise _refusal(verdict, self.backend.clock())
        admission = Admission(self.backend, plan, verdict, _headers(verdict))
        req.limit_headers = admission.headers
        req.admission = admission
        return admission


async def admit_request(
    limiter: Limiter,
    req: Request,
    session_id: str | None,
    plane: Mapping[str, Mapping[str, object]],
) -> None:
    """One request of a plane that counts requests only (ACP prompt turns, A2A messages): one
    request and one in flight reserved on every limit that applies (``req.admission``), or the
    429 raised. ``session_id``: what a ``subject: session`` limit counts it under (else the
    session the dispatcher attributed); ``plane``: the plane's CEL variable for ``when``."""
    table = req.snapshot.limits
    if req.route.id not in table.by_route:  # a route no limit names: one lookup
        return
    attributed = req.session_id
    req.session_id = session_id or attributed
    try:
        matched = matching(req, table, plane=plane)
    finally:
        req.session_id = attributed
    if matched:
        await limiter.admit(req, matched, [0.0, 0.0, 0.0, 0.0, 1.0, 1.0], [0.0] * 6, 0)


def settle_request(req: Request) -> None:
    """The answer of an :func:`admit_request` request ended (any way): its hold is released
    (once; later calls do nothing) and the row learns what a limit did."""
    admission: Admission | None = req.admission
    if admission is None:
        return
    req.admission = None
    admission.settle(0.0, 0, 0)
    if admission.action is not None:
        req.limit_id, req.limit_action = admission.limit_id, admission.action


# ------------------------------------------------------------------------------ answers


def _amount(meter: int, value: float) -> float | int:
    if meter == COST:
        return round(value, 6)
    return int(value)


def _rfc3339(ts: float | None) -> str | None:
    if ts is None or math.isinf(ts):
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _refusal(d: Denial, now: float) -> Refusal:
    spec, meter = d.spec, d.meter
    cap = spec.caps[meter]
    remaining = max(0.0, cap - d.used)
    name = METERS[meter]
    what = f"${cap:g}" if meter == COST else f"{cap:g} {name.replace('_', ' ')}"
    if meter == CONCURRENT:
        when = "retry when a request in flight ends"
    elif d.retry_after is not None and d.resets_at is not None:
        when = f"resets at {_rfc3339(d.resets_at)}"
    else:
        when = "it does not reset (lifetime)"
    message = (
        f'limit "{spec.id}" reached for {d.subject}: {what}'
        + (f" per {spec.window}" if spec.window_s or spec.window == "month" else "")
        + f", {_amount(meter, remaining)} left; {when}"
    )
    detail: dict[str, Any] = {
        "id": spec.id,
        "subject": d.subject,
        "meter": name,
        "limit": _amount(meter, cap),
        "used": _amount(meter, d.used),
        "remaining": _amount(meter, remaining),
        "window": spec.window,
        "resets_at": _rfc3339(d.resets_at),
        "retry_after_s": d.retry_after,
    }
    headers: list[tuple[bytes, bytes]] = [
        (b"ratelimit-policy", _policy_item(spec, meter).encode()),
        (b"ratelimit", _state_item(spec, meter, remaining, d.resets_at, now).encode()),
    ]
    if d.retry_after is None or d.retry_after > 600:
        headers.append((b"x-should-retry", b"false"))  # the SDKs' own retries would only wait
    return Refusal(
        429,
        "rate_limited",
        message,
        headers,
        retry_after=d.retry_after,
        detail={"limit": detail},
    )


def _item_name(spec: LimitSpec, meter: int) -> str:
    name = spec.id if len(spec.capped) == 1 else f"{spec.id}/{METERS[meter]}"
    return '"' + name.replace("\\", "").replace('"', "") + '"'


def _policy_item(spec: LimitSpec, meter: int) -> str:
    item = f"{_item_name(spec, meter)};q={int(spec.caps[meter] * _SCALE[meter])}"
    item += f';qu="{_UNITS[meter]}"'
    if spec.window_s is not None:
        item += f";w={spec.window_s}"
    return item


def _state_item(
    spec: LimitSpec, meter: int, remaining: float, resets_at: float | None, now: float
) -> str:
    item = f"{_item_name(spec, meter)};r={max(0, int(remaining * _SCALE[meter]))}"
    if resets_at is not None and not math.isinf(resets_at) and meter != CONCURRENT:
        item += f";t={max(0, math.ceil(resets_at - now))}"
    return item


def _headers(grant: Grant) -> Headers:
    now = grant.now
    policies: list[str] = []
    states: list[str] = []
    warnings: list[str] = []
    warned = grant.warned
    bit = 1
    for charge, counter in zip(grant.charges, grant.counters, strict=True):
        spec = charge.spec
        if spec.enforce:
            policies.append(spec.policy)
            caps, used, held, end = spec.caps, counter.used, counter.held, counter.end
            reset = "" if end == math.inf else f";t={max(0, math.ceil(end - now))}"
            for m, prefix, scale, timed in spec.states:
                left = int((caps[m] - used[m] - held[m]) * scale)
                states.append(f"{prefix}{left if left > 0 else 0}{reset if timed else ''}")
            if warned & bit:
                warnings.append(f"{spec.id} {int(share(spec, counter) * 100)}% used")
        bit <<= 1
    out: Headers = []
    if policies:
        out.append((b"ratelimit-policy", ", ".join(policies).encode()))
        out.append((b"ratelimit", ", ".join(states).encode()))
    if warnings:
        out.append((b"x-agw-limit-warning", "; ".join(warnings).encode()))
    if grant.clamped_by is not None:
        value = f'{grant.output}; limit="{grant.clamped_by}"'
        out.append((b"x-agw-max-tokens", value.encode()))
    return out
