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
from collections.abc import Hashable, Mapping
from typing import TYPE_CHECKING

from agw.config import families as f
from agw.policy.limit_answers import headers_for, refusal
from agw.policy.limit_backend import InProcessBackend
from agw.policy.limit_grant import Grant
from agw.policy.limit_table import (
    EMPTY_TABLE,
    Announce,
    CompiledLimit,
    LimitTable,
    RouteLimits,
    compile_limits,
)
from agw.policy.limit_tally import Charges
from agw.policy.limit_types import Charge, Denial, LimitBackend, LimitSpec, Plan, Vector
from agw.policy.rules import RuleSet
from agw.policy.variables import variables_of

# one admitted request's hold: what the planes call it (agw/policy/limit_grant.py)
Admission = Grant

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
    if candidates.keyed:  # the common case: per key, route or globally
        known = candidates.charges.get(principal.key_id if principal is not None else None)
        if known is not None:
            return known
    if principal is not None:
        key_id, user, org = principal.key_id, principal.user, principal.org
    else:
        key_id = user = org = None
    session: str | None = None
    if candidates.sessions and (sid := req.session_id):
        session = f"{req.owner_id or '-'}/{sid}"
    # each subject's value, in SUBJECTS order (None: the request has none)
    values = (key_id, user, org, req.route.id, model or upstream_model or None, session, "*")
    # Without a ``when``, which limits apply follows from the subjects' values, and, for the
    # static match lists, the models and the provider: the same ones, the same charges, kept
    # (with their tally) for the next request. A ``when`` looks at the whole request.
    kept: Hashable = None
    if not candidates.when:
        if candidates.keyed:
            kept = key_id
        elif candidates.plain:
            kept = values
        else:
            kept = (values, model, upstream_model, provider_id)
        known = candidates.charges.get(kept)
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
    if not candidates.when:
        if len(candidates.charges) >= CHARGES_KEPT:
            candidates.charges.clear()
        whole = candidates.announce if len(out) == len(candidates.limits) else None
        out = candidates.charges[kept] = Charges(out, whole)
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
        verdict = await self.backend.reserve(Plan(charges, fixed, per_output, want_output))
        return self._admitted(req, verdict, fixed, per_output, announce)

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
        # a cached list with compiled code decides in one call (None: not now, or not there);
        # what it grants is plain (no clamp, no shadow note: those take the careful path), with
        # the route's RateLimit fields as head lines when nothing warned
        tally = charges.tally if type(charges) is Charges else None
        admit = tally.admit if tally is not None else None
        verdict = admit(self.backend, fixed, per_output, want_output) if admit else None
        if verdict is None:
            verdict = self._reserve_now(charges, fixed, per_output, want_output)
            if type(verdict) is not Grant or verdict.clamped_by is not None or verdict.shadow:
                return self._admitted(req, verdict, fixed, per_output, announce)
        # (each admission's fields replace an earlier one's: an MCP batch admits per call)
        if verdict.head:
            req.limit_head, req.limit_headers = verdict.head, None
        else:
            req.limit_head, req.limit_headers = b"", headers_for(verdict, announce)
        req.admission = verdict
        return verdict

    def _admitted(
        self,
        req: Request,
        verdict: Grant | Denial,
        fixed: Vector,
        per_output: Vector,
        announce: Announce | None,
    ) -> Admission:
        if isinstance(verdict, Denial):
            req.limit_id, req.limit_action = verdict.spec.id, "refused"
            raise refusal(verdict, self.backend.clock())
        if verdict.backend is None:  # a backend that left them to the Limiter
            verdict.backend, verdict.fixed, verdict.per_output = self.backend, fixed, per_output
        if verdict.clamped_by is not None:
            verdict.action, verdict.limit_id = "clamped", verdict.clamped_by
        elif verdict.shadow is not None:
            verdict.action, verdict.limit_id = "shadow", verdict.shadow
        req.limit_head, req.limit_headers = b"", headers_for(verdict, announce)
        req.admission = verdict
        return verdict


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
