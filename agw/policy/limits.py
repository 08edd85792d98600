"""Limits admission: step 3 of the pipeline for requests, tokens, dollars and requests in flight
(docs/limits.md).

The snapshot compiles the ``limits`` family into a :class:`LimitTable` (each route's candidate
limits, found once per config: agw/policy/limit_table.py). Per request, a plane asks
:func:`matching` which limits apply (the static ``match`` lists, then ``when``) and what each
counts against (the subject's value), then :meth:`Limiter.admit` (or :meth:`Limiter.admit_now`
where the backend decides in process) reserves what the request may take on every counter at
once (agw/policy/limit_backend.py) or raises the 429 :class:`Refusal`. The :class:`Admission`
it returns carries the answer's headers (``RateLimit-Policy``, ``RateLimit``, the soft warning,
the clamp: agw/policy/limit_answers.py), lets a stream take more as it flows
(:meth:`Admission.flow`), and settles to what the answer really used
(:meth:`Admission.settle`), on success, error or cancellation alike.

A route no limit names costs one dictionary lookup.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from agw.config import families as f
from agw.policy.limit_answers import announced, headers_of, refusal
from agw.policy.limit_backend import (
    COST,
    INPUT,
    NO_CAP,
    OUTPUT,
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
)
from agw.policy.limit_table import (
    EMPTY_TABLE,
    Announce,
    CompiledLimit,
    LimitTable,
    RouteLimits,
    compile_limits,
)
from agw.policy.rules import RuleSet
from agw.policy.variables import variables_of
from agw.types import Headers

# what the planes and the snapshot use, compiled in limit_table.py
__all__ = [
    "EMPTY_TABLE",
    "Admission",
    "Announce",
    "LimitTable",
    "Limiter",
    "RouteLimits",
    "admit_request",
    "compile_limits",
    "matching",
    "settle_request",
]

if TYPE_CHECKING:
    from agw.request import Request
    from agw.store.engine import Store

log = logging.getLogger(__name__)

SAVE_EVERY_S = 2.0
EVICT_EVERY = 30  # saves: ended windows are forgotten about once a minute
FLOW_SLACK_TOKENS = 64  # a stream past its hold takes this many output tokens more at once
CHARGES_KEPT = 4096  # per route: the charges of this many sets of subject values


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
    """The limits that apply to ``req``, each with its subject's value (a :class:`Charge`); the
    list may be shared with other requests of the same subjects (never to be changed).
    ``model`` and ``upstream_model``: the LLM request's logical and upstream model (either
    matches ``match.models``); ``plane``: the plane's CEL variable for ``when`` (``llm=...``)."""
    candidates = table.by_route.get(req.route.id)
    if candidates is None:
        return []
    principal = req.principal
    if principal is not None:
        key_id, user, org = principal.key_id, principal.user, principal.org
    else:
        key_id = user = org = None
    session: str | None = None
    if candidates.sessions and (sid := req.session_id):
        session = f"{req.owner_id or '-'}/{sid}"
    # each subject's value, in SUBJECTS order (None: the request has none)
    values = (key_id, user, org, req.route.id, model or upstream_model or None, session, "*")
    if candidates.plain:
        known = candidates.charges.get(values)
        if known is not None:
            return known
    out: list[Charge] = []
    for lim in candidates.limits:
        if not lim.plain and not _matches(
            req, lim, key_id, user, org, model, upstream_model, provider_id
        ):
            continue
        value = values[lim.subject_ix]
        if value is None:
            continue
        if lim.when is not None and not _when(req, lim.when, plane or {}):
            continue
        out.append(Charge(lim.spec, value))
    if candidates.plain:
        if len(candidates.charges) >= CHARGES_KEPT:
            candidates.charges.clear()
        candidates.charges[values] = out
    return out


def _matches(
    req: Request,
    lim: CompiledLimit,
    key_id: str | None,
    user: str | None,
    org: str | None,
    model: str,
    upstream_model: str,
    provider_id: str,
) -> bool:
    """Whether ``lim``'s static ``match`` lists let ``req`` through (``when`` is checked
    last, once the subject has a value)."""
    if lim.key_ids and key_id not in lim.key_ids:
        return False
    if lim.key_tags:
        rec = req.snapshot.state.get(f.VIRTUAL_KEY, key_id) if key_id else None
        if rec is None or rec.obj.tag not in lim.key_tags:
            return False
    if lim.models and model not in lim.models and upstream_model not in lim.models:
        return False
    if lim.provider_ids and provider_id not in lim.provider_ids:
        return False
    if lim.users and user not in lim.users:
        return False
    return not (lim.orgs and org not in lim.orgs)


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

    def room(self, input_tokens: int) -> float:
        """The output tokens a stream (``input_tokens`` as reported, 0 while unknown) may
        reach before :meth:`need` asks for more, less one for the float's rounding (-1: it
        already needs more; infinite: output costs nothing held)."""
        plan, hold = self.plan, self.grant.held
        per, fixed = plan.per_output, plan.fixed
        est_in = fixed[INPUT]
        extra_in = input_tokens - est_in if input_tokens > est_in else 0.0
        room = math.inf
        for m in (COST, TOKENS, INPUT, OUTPUT):
            used = fixed[m]
            if extra_in and est_in and m != OUTPUT:
                used += extra_in * fixed[m] / est_in
            left = hold[m] + 1e-12 - used
            if left < 0:
                return -1
            if per[m] > 0:
                room = min(room, math.floor(left / per[m]) - 1)
        return room

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
        tin, tout = input_tokens, output_tokens  # counted into float vectors
        actual: Vector = [cost_usd, tin + tout, tin, tout, 1.0, 0.0]
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
        # the in-process backend decides without awaiting: admit_now calls it directly
        self._reserve_now = (
            backend.reserve_now
            if isinstance(backend, InProcessBackend) and backend.sync_reserve
            else None
        )

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
        announce: Announce | None = None,
    ) -> Admission:
        """Reserve on every matched limit at once, or raise the 429 refusal (recorded on the
        request: ``req.limit_id``, ``req.limit_action``). ``announce``: the route's, when every
        one of its limits charges the request (its headers are then built from it)."""
        admission = self.admit_now(req, charges, fixed, per_output, want_output, announce)
        if admission is not None:
            return admission
        plan = Plan(charges, fixed, per_output, want_output)
        return self._admitted(req, plan, await self.backend.reserve(plan), announce)

    def admit_now(
        self,
        req: Request,
        charges: list[Charge],
        fixed: Vector,
        per_output: Vector,
        want_output: int,
        announce: Announce | None = None,
    ) -> Admission | None:
        """:meth:`admit` without awaiting, where the backend decides in process; None where it
        must await (then call :meth:`admit`)."""
        if self._reserve_now is None:
            return None
        plan = Plan(charges, fixed, per_output, want_output)
        return self._admitted(req, plan, self._reserve_now(plan), announce)

    def _admitted(
        self, req: Request, plan: Plan, verdict: Grant | Denial, announce: Announce | None
    ) -> Admission:
        if isinstance(verdict, Denial):
            req.limit_id, req.limit_action = verdict.spec.id, "refused"
            raise refusal(verdict, self.backend.clock())
        if announce is not None and len(verdict.charges) == announce.count:
            headers = announced(verdict, announce)
        else:
            headers = headers_of(verdict)
        admission = Admission(self.backend, plan, verdict, headers)
        req.limit_headers = headers
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
