"""Where limit counters live, and the one operation that must be atomic: check and reserve.

A request counts against one counter per limit that applies to it (a :class:`Charge`: the
limit and the subject's value). Each counter keeps, per meter (dollars, tokens, requests,
requests in flight), what is ``used`` (settled by answers that ended in the current window) and
what is ``held`` (reserved by requests still in flight), of the meters the limit caps (and
requests, always, as used): nothing reads the others. The backend:

- :meth:`LimitBackend.reserve`: all the charges of one request, checked and held together or
  not at all. What a request holds is its ``fixed`` part (the estimated input, one request, one
  in flight) plus ``per_output`` times the output tokens granted: the ``want_output`` asked
  for, or fewer (the largest number every enforced counter can still pay for, when that is at
  least the binding limits' ``min_output_tokens``: the clamp), or a :class:`Denial`.
- :meth:`extend`: a stream that passes what it holds takes more, atomically; a ``cut`` limit
  that cannot pay stops it, a ``finish`` limit lets it run past its cap.
- :meth:`settle`: the answer ended (or failed, or was cancelled): its hold is dropped and what
  it really used is added to ``used``.

:class:`InProcessBackend` keeps the counters in this process: each method runs without awaiting,
so on one event loop each is atomic. A shared backend (Redis, PostgreSQL: the scale-out issue)
implements the same methods with one atomic script or transaction per call: nothing here reads
a counter and writes it back in two steps. Windows are fixed and aligned to UTC (``1d`` resets
at midnight UTC, ``month`` on the 1st); an answer that ends after its window rolled over is
counted in the new one.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Sequence

from agw.config.limits import window_seconds
from agw.policy.limit_grant import Grant
from agw.policy.limit_tally import Charges, Tally, tally_of
from agw.policy.limit_types import (
    _EPS,
    CONCURRENT,
    COST,
    INPUT,
    OUTPUT,
    REQUESTS,
    TOKENS,
    Charge,
    Counter,
    Denial,
    Extension,
    LimitSpec,
    Plan,
    Vector,
    hold_of,
    window_bounds,
    zero,
)
from agw.store.limit_repo import CounterRow

GENERATIONS = itertools.count(1)  # the in-process backends' generations (see __init__)


class InProcessBackend:
    """The counters in this process's memory (see the module docstring). ``clock``: unix
    seconds, injectable for tests of window boundaries."""

    saved_by_limiter = True  # the Limiter loads and saves these counters (a subclass may not)
    sync_reserve = True  # reserve_now decides without awaiting (a subclass may not)

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._counters: dict[tuple[str, str], Counter] = {}
        self.dirty: set[Counter] = set()  # changed since the last save
        self.deleted: set[tuple[str, str]] = set()  # dropped since the last save
        # a new number whenever a counter is dropped, replaced, rolled over or reset: the
        # tallies of earlier generations are stale (agw/policy/limit_tally.py). Drawn from one
        # count for the process, so that no two backends ever share one: a list of charges
        # (cached in the shared limit table) may be charged on another backend too
        self.generation = next(GENERATIONS)

    # ------------------------------------------------------------------------------ counters

    def _counter(self, spec: LimitSpec, subject: str, now: float) -> Counter:
        key = (spec.id, subject)
        counter = self._counters.get(key)
        if counter is None:
            start, end = window_bounds(spec.window, spec.window_s, now)
            counter = self._counters[key] = Counter(spec.id, subject, spec.window, start, end)
        elif now >= counter.end or counter.window != spec.window:
            counter.roll(spec, now)
            self.dirty.add(counter)
            self.generation = next(GENERATIONS)
        return counter

    async def counters(self, limit_id: str | None = None) -> list[Counter]:
        """The counters (of one limit), each rolled to the current window."""
        now = self.clock()
        out = []
        for (lid, _), counter in self._counters.items():
            if limit_id is None or lid == limit_id:
                if now >= counter.end:
                    counter.start, counter.end = window_bounds(
                        counter.window, window_seconds(counter.window), now
                    )
                    counter.used = zero()
                    self.generation = next(GENERATIONS)
                out.append(counter)
        return out

    # ------------------------------------------------------------------------- the hot path

    async def reserve(self, plan: Plan) -> Grant | Denial:
        return self.reserve_now(plan.charges, plan.fixed, plan.per_output, plan.want_output)

    def reserve_now(
        self, charges: list[Charge], fixed: Vector, per_output: Vector, want: int
    ) -> Grant | Denial:
        """:meth:`reserve` without a coroutine, of the :class:`Plan`'s fields
        (:attr:`sync_reserve`: the Limiter calls it directly; nothing here awaits)."""
        now = self.clock()
        tally = charges.tally if type(charges) is Charges else None
        if tally is None or tally.generation != self.generation or now >= tally.end:
            tally = self._tally(charges, now)
        admit = tally.admit
        if admit is not None:  # compiled for a cached list of charges
            grant = admit(self, fixed, per_output, want)
            if grant is None:  # (the tally is current: a counter cannot pay)
                return self._reserve_tight(Plan(charges, fixed, per_output, want), now)
            return grant  # type: ignore[no-any-return]
        hold = hold_of(fixed, per_output, want)
        warned = 0
        # The common case first: every counter can pay for all that is asked (no clamp, no
        # refusal, no shadow note), each held as it is checked; anything else gives back
        # what was held and takes the careful path. A counter holds only what its limit caps
        # (nothing reads the rest), and what it holds is not saved: nothing here is dirty.
        for check in tally.checks:
            used, held, m, cap, level, bit = check
            after = used[m] + held[m] + hold[m]
            if after > cap:
                for held, _, m in tally.settles:  # give back what was held before this one
                    if held is check[1] and m == check[2]:
                        break
                    held[m] -= hold[m]
                return self._reserve_tight(Plan(charges, fixed, per_output, want), now)
            if after >= level:
                warned |= bit
            held[m] += hold[m]
        return Grant(
            charges,
            tally.counters,
            hold,
            want,
            None,
            None,
            now,
            warned,
            False,
            tally,
            self,
            fixed,
            per_output,
        )

    def _tally(self, charges: list[Charge], now: float) -> Tally:
        """The :class:`Tally` of ``charges``' counters as they are now (kept on a cached list
        of charges)."""
        counters = [self._counter(c.spec, c.subject, now) for c in charges]
        tally = tally_of(charges, counters, self.generation, self.clock)
        if type(charges) is Charges:
            charges.tally = tally
        return tally

    def _caps(self, spec: LimitSpec, counter: Counter) -> Sequence[float]:
        """What ``counter`` may reach on each meter: the limit's caps here (a backend that
        shares a cap in parts gives each process its part)."""
        return spec.caps

    def _reserve_tight(self, plan: Plan, now: float) -> Grant | Denial:
        """:meth:`reserve` where some counter cannot pay for all that is asked: the clamp, the
        refusal, or a shadow limit's note."""
        fixed, per_out, want = plan.fixed, plan.per_output, plan.want_output
        granted = want
        clamped_by: str | None = None
        floor = 0
        shadow: str | None = None
        counters: list[Counter] = []
        for charge in plan.charges:
            spec = charge.spec
            counter = self._counter(spec, charge.subject, now)
            counters.append(counter)
            used, held, caps = counter.used, counter.held, self._caps(spec, counter)
            for m in spec.capped:
                avail = caps[m] - used[m] - held[m] - fixed[m]
                per = per_out[m]
                if per > 0:
                    fits = math.floor(avail / per + _EPS) if avail >= -_EPS else -1
                    if fits >= want:
                        continue
                else:
                    if avail >= -_EPS:
                        continue
                    fits = -1
                if not spec.enforce:
                    shadow = shadow or spec.id
                    continue
                if fits < 1 or fits < spec.min_output_tokens or per == 0:
                    return deny(charge, counter, m, fixed, per_out, now)
                if fits < granted:
                    granted, clamped_by = fits, spec.id
                floor = max(floor, spec.min_output_tokens)
        if granted < floor:  # two limits bind, and one's floor is above what the other affords
            for charge, counter in zip(plan.charges, counters, strict=True):
                spec = charge.spec
                if spec.id == clamped_by:
                    m = next(m for m in spec.capped if per_out[m] > 0)
                    return deny(charge, counter, m, fixed, per_out, now)
        hold = hold_of(fixed, per_out, granted)
        warned = 0
        for i, (charge, counter) in enumerate(zip(plan.charges, counters, strict=True)):
            used, held, levels = counter.used, counter.held, charge.spec.levels
            for m in charge.spec.capped:
                held[m] += hold[m]
            if any(used[m] + held[m] >= levels[m] for m in charge.spec.capped):
                warned |= 1 << i
        return Grant(
            plan.charges,
            counters,
            hold,
            granted,
            clamped_by,
            shadow,
            now,
            warned,
            backend=self,
            fixed=fixed,
            per_output=per_out,
        )

    async def extend(self, grant: Grant, extra: Vector) -> Extension:
        exceeded: list[str] = []
        for charge, counter in zip(grant.charges, grant.counters, strict=True):
            spec = charge.spec
            if not spec.enforce:
                continue
            caps = self._caps(spec, counter)
            for m in spec.capped:
                if extra[m] <= 0:
                    continue
                if counter.used[m] + counter.held[m] + extra[m] > caps[m] + _EPS:
                    if spec.on_exceed == "cut":
                        return Extension(cut_by=charge)
                    if spec.id not in exceeded:
                        exceeded.append(spec.id)
        for charge, counter in zip(grant.charges, grant.counters, strict=True):
            held = counter.held
            for m in charge.spec.capped:
                held[m] += extra[m]
        for m in range(6):
            grant.held[m] += extra[m]
        return Extension(exceeded=tuple(exceeded))

    def settle(self, grant: Grant, actual: Vector) -> None:
        if grant.settled:
            return
        grant.settled = True
        now = self.clock()
        hold = grant.held
        dirty = self.dirty
        tally = grant.tally
        if tally is not None and tally.generation == self.generation and now < tally.end:
            # the same counters, in the same windows: the flat loops (a grant of compiled
            # code settles there first: Grant.quick)
            for held, used, m in tally.settles:
                held[m] -= hold[m]
                used[m] += actual[m]
            requests = actual[REQUESTS]
            for used in tally.requests:
                used[REQUESTS] += requests
            dirty.update(tally.counters)
            return
        requests = actual[REQUESTS]
        for charge, counter in zip(grant.charges, grant.counters, strict=True):
            spec = charge.spec
            if counter.live:
                if now >= counter.end:
                    counter.roll(spec, now)
                    self.generation = next(GENERATIONS)  # a new used list: tallies are stale
                # no clamp at 0: a float's rounding leaves at most ~1e-18 of a dollar held
                m = spec.meter
                if m >= 0:
                    counter.held[m] -= hold[m]
                else:
                    held = counter.held
                    for m in spec.capped:
                        held[m] -= hold[m]
            else:  # reset or dropped meanwhile: what was used goes to the live one
                counter = self._counter(spec, charge.subject, now)
            used = counter.used
            m = spec.meter
            if m in (REQUESTS, CONCURRENT):
                used[REQUESTS] += requests
            elif m >= 0:
                used[m] += actual[m]
                used[REQUESTS] += requests
            else:
                for m in spec.counted:
                    used[m] += actual[m]
            dirty.add(counter)

    # ---------------------------------------------------------------------------- admin

    async def reset(self, limit_id: str, subject: str | None = None) -> int:
        """Forget what was used (holds of requests in flight stay); returns how many counters."""
        n = 0
        for (lid, subj), counter in list(self._counters.items()):
            if lid == limit_id and (subject is None or subj == subject):
                counter.used = zero()
                self.dirty.add(counter)
                n += 1
        if n:
            self.generation = next(GENERATIONS)
        return n

    def forget(self, limit_ids: Iterable[str]) -> None:
        """Drop the counters of limits that no longer exist (a config change)."""
        gone = set(limit_ids)
        for key in [k for k in self._counters if k[0] in gone]:
            counter = self._counters.pop(key)
            counter.live = False
            self.dirty.discard(counter)
            self.deleted.add(key)
            self.generation = next(GENERATIONS)

    async def close(self) -> None:
        """Nothing to release: the :class:`~agw.policy.limits.Limiter` saves the counters."""

    # ---------------------------------------------------------------------- persistence

    def load(self, rows: Sequence[CounterRow], specs: dict[str, LimitSpec]) -> int:
        """Counters saved by an earlier process, for the limits that still exist with the same
        window, and only where that window has not ended: a restart does not reset a day's
        or a month's spend."""
        now = self.clock()
        n = 0
        for row in rows:
            spec = specs.get(row.limit_id)
            if spec is None or spec.window != row.window:
                continue
            start, end = window_bounds(spec.window, spec.window_s, now)
            if abs(row.window_start / 1000 - start) > 1e-3:
                continue
            used = zero()
            used[COST] = row.cost_usd
            used[TOKENS] = float(row.total_tokens)
            used[INPUT] = float(row.input_tokens)
            used[OUTPUT] = float(row.output_tokens)
            used[REQUESTS] = float(row.requests)
            key = (row.limit_id, row.subject)
            if (old := self._counters.get(key)) is not None:
                old.live = False
            self._counters[key] = Counter(row.limit_id, row.subject, spec.window, start, end, used)
            n += 1
        if n:
            self.generation = next(GENERATIONS)
        return n

    def evict(self) -> int:
        """Forget the counters whose window has ended and that hold nothing (their use is
        over: a new request starts a fresh window), so subjects seen once (sessions, users)
        do not pile up in memory; lifetime counters stay. Their saved rows are deleted."""
        now = self.clock()
        gone = [
            key
            for key, c in self._counters.items()
            if now >= c.end and all(abs(x) < _EPS for x in c.held)
        ]
        for key in gone:
            counter = self._counters.pop(key)
            counter.live = False
            self.dirty.discard(counter)
            self.deleted.add(key)
        if gone:
            self.generation = next(GENERATIONS)
        return len(gone)

    def take_changes(self) -> tuple[list[CounterRow], list[tuple[str, str]]]:
        """The counters changed since the last call, as rows to save, and those to delete."""
        now_ms = int(self.clock() * 1000)
        rows = []
        for counter in self.dirty:
            if not counter.live:  # dropped since (forget, evict): its row is deleted
                continue
            used = counter.used
            rows.append(
                CounterRow(
                    counter.limit_id,
                    counter.subject,
                    counter.window,
                    0 if counter.end == math.inf else int(counter.start * 1000),
                    used[COST],
                    int(used[TOKENS]),
                    int(used[INPUT]),
                    int(used[OUTPUT]),
                    int(used[REQUESTS]),
                    now_ms,
                )
            )
        deleted = list(self.deleted)
        self.dirty = set()
        self.deleted = set()
        return rows, deleted


def deny(
    charge: Charge,
    counter: Counter,
    meter: int,
    fixed: Vector,
    per_out: Vector,
    now: float,
) -> Denial:
    """The refusal of ``charge``: its counter cannot pay on ``meter``."""
    spec = charge.spec
    used = counter.used[meter] + counter.held[meter]
    resets_at: float | None = None if counter.end == math.inf else counter.end
    if meter == CONCURRENT:
        retry_after: int | None = 1
        resets_at = None
    elif (
        meter < REQUESTS
        and counter.held[meter] > _EPS
        and (
            counter.used[meter] + fixed[meter] + per_out[meter] * spec.min_output_tokens
            <= spec.caps[meter]
        )
    ):
        retry_after = 2  # requests in flight hold it: their answers may free enough
    elif resets_at is None:
        retry_after = None
    else:
        retry_after = max(1, math.ceil(resets_at - now))
    return Denial(spec, charge.subject, meter, used, retry_after, resets_at)


def share(spec: LimitSpec, counter: Counter) -> float:
    """The largest share of a cap used or held."""
    best = 0.0
    for m in spec.capped:
        if m == CONCURRENT:
            continue
        share = (counter.used[m] + counter.held[m]) / spec.caps[m]
        if share > best:
            best = share
    return best
