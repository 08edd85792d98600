"""Limit caps shared through the config store, in leases (docs/scale-out.md, "Shared limits").

Without a Redis, the processes that share one store (``--workers N`` on a SQLite file, replicas
on one PostgreSQL database) share each cap by leasing it: a process admits requests against
its own counters, as :class:`~agw.policy.limit_backend.InProcessBackend` does, but each
counter may reach only what this process holds of the cap, its *lease*. A request its lease
cannot pay for takes more from the store first, in one transaction per request
(:meth:`LeaseBackend._acquire`): the counter's row in ``limit_counters`` is locked (an upsert
that adds what this process used since its last look, so the row always counts what every
process used, at most :data:`TICK_S` late), the other processes' live leases are summed from
``limit_leases`` (agw/store/lease_repo.py), and this process's lease grows by what the
request lacks plus a chunk of whole requests of its size (up to a :data:`CHUNK_SHARE` of the
cap, at most half of what is still free), or by all that is free when that pays only for the
request clamped, or not at all (the request is then clamped or refused as one process would,
and a remnant too small for it stays free for the others). Every
:data:`TICK_S` each process adds what it used to the shared rows, renews its leases
(``expires_at``: :data:`LEASE_TTL_S` ahead) and gives back what it holds of a counter no request
took from during the last tick. A process that stops renewing (killed) loses its leases when
they expire.

So the caps hold across processes: what all the processes hold never exceeds a cap less what
was used. The limits of the guarantee (docs/scale-out.md): a process killed before adding what
it used loses that use (at most one tick's, within its lease: the overshoot); a lease idle in
one process is not free for another until it is given back (within a tick of going idle: the
others may refuse early meanwhile); the windows follow each process's clock. A request whose
lease covers it awaits nothing: the store is read only when a chunk runs out.

When the store cannot be reached, a request the leases cover is admitted as usual; one that
needs more fails open (admitted uncounted) or closed (a 503) as its limit's
``on_backend_failure`` says, counted in ``agw_limit_backend_failures_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from agw.config.limits import window_seconds
from agw.errors import StoreError
from agw.policy.limit_backend import InProcessBackend
from agw.policy.limit_failures import BackendFailures
from agw.policy.limit_grant import Grant
from agw.policy.limit_types import (
    NO_CAP,
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
from agw.store import lease_repo
from agw.store.engine import Conn, Store

log = logging.getLogger(__name__)

TICK_S = 1.0  # what a process used reaches the store, and idle leases go back, this often
LEASE_TTL_S = 30.0  # a lease its holder stopped renewing counts no more after this long
CHUNK_SHARE = 0.05  # a lease grows by this share of the cap beyond what a request lacks ...
CHUNK_FREE = 0.5  # ... and by no more than this share of what is still free
_EPS = 1e-9


@dataclass(slots=True, eq=False)
class LeaseCounter(Counter):
    """A counter of this process, with what it holds of the cap.

    ``used`` is what every process had used when this one last looked (``shared``) plus what
    this one used since (``unflushed``); ``lease`` is this process's part of the cap, which its
    unflushed use and its holds draw on. ``caps`` (per meter): ``shared`` plus ``lease``, or the
    limit's cap, whichever is lower: what this counter may reach here.
    """

    shared: Vector = field(default_factory=zero)
    unflushed: Vector = field(default_factory=zero)
    lease: Vector = field(default_factory=zero)
    caps: list[float] = field(default_factory=list)
    spec: LimitSpec | None = None
    busy: bool = False  # took a request since the last tick

    def refresh(self, spec: LimitSpec) -> None:
        self.spec = spec
        self.caps = [
            min(cap, self.shared[m] + self.lease[m]) if cap != NO_CAP else NO_CAP
            for m, cap in enumerate(spec.caps)
        ]
        for m in range(len(self.used)):
            self.used[m] = self.shared[m] + self.unflushed[m]


@dataclass(frozen=True, slots=True)
class _Ask:
    counter: LeaseCounter
    spec: LimitSpec
    need: Vector  # what the lease lacks for the request (per meter, 0 where it suffices)
    floor: Vector  # what it lacks for the request clamped to its floor (the least it admits)
    unit: Vector  # the request's own size: a chunk is a whole number of such requests


@dataclass(slots=True)
class _Looked:
    """What one transaction read of a counter and will leave it with, applied in memory once
    the transaction commits (a rolled-back one changes nothing)."""

    counter: LeaseCounter
    start_ms: int
    flushed: Vector  # this process's use added to the row
    shared: Vector  # what the row then counts as used
    others: Vector  # what the other processes' live leases hold
    lease: Vector  # this process's lease after the transaction

    def apply(self) -> None:
        counter = self.counter
        for m in range(6):
            counter.unflushed[m] -= self.flushed[m]
        counter.shared = self.shared
        counter.lease = self.lease
        if counter.spec is not None:
            counter.refresh(counter.spec)


class StoreLeaseUnavailable(StoreError):
    status = 503
    code = "limit_backend_unavailable"


class LeaseBackend(InProcessBackend):
    """The leased counters of this process over ``db`` (see the module docstring). ``holder``:
    this process's name in ``limit_leases`` (random by default)."""

    saved_by_limiter = False  # the shared rows are this backend's own
    sync_reserve = False  # a lease that runs out is renewed from the store

    def __init__(
        self,
        db: Store,
        *,
        clock: Callable[[], float] = time.time,
        holder: str | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        super().__init__(clock)
        self.db = db
        self.holder = holder or secrets.token_hex(8)
        self.tick_s = tick_s
        self.metrics = BackendFailures()
        self._ticker: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------------------ counters

    def _counter(self, spec: LimitSpec, subject: str, now: float) -> LeaseCounter:
        key = (spec.id, subject)
        counter = self._counters.get(key)
        if not isinstance(counter, LeaseCounter):
            start, end = window_bounds(spec.window, spec.window_s, now)
            if counter is not None:
                counter.live = False
            counter = LeaseCounter(spec.id, subject, spec.window, start, end)
            self._counters[key] = counter
        elif now >= counter.end or counter.window != spec.window:
            # a new window: nothing used in it yet, nothing leased for it (the holds of the
            # requests in flight stay, and the next request leases for them too)
            counter.roll(spec, now)
            counter.shared, counter.unflushed, counter.lease = zero(), zero(), zero()
        if counter.spec is not spec:
            counter.refresh(spec)
        return counter

    def _caps(self, spec: LimitSpec, counter: Counter) -> Sequence[float]:
        assert isinstance(counter, LeaseCounter)
        return counter.caps

    # ------------------------------------------------------------------------- the hot path

    async def reserve(self, plan: Plan) -> Grant | Denial:
        if self._ticker is None:
            self._start()
        now = self.clock()
        fixed, per, want = plan.fixed, plan.per_output, plan.want_output
        hold = hold_of(fixed, per, want)
        get = self._counters.get
        counters: list[Counter] = []
        warned = 0
        bit = 1
        # The common case first, as in process: every lease pays for all that is asked.
        for charge in plan.charges:
            spec = charge.spec
            counter = get((spec.id, charge.subject))
            if (
                not isinstance(counter, LeaseCounter)
                or now >= counter.end
                or counter.spec is not spec
            ):
                return await self._reserve_slow(plan, now)
            used, held, unflushed, lease, levels = (
                counter.used,
                counter.held,
                counter.unflushed,
                counter.lease,
                spec.levels,
            )
            for m in spec.capped:
                ask = hold[m]
                if unflushed[m] + held[m] + ask > lease[m] + _EPS:
                    return await self._reserve_slow(plan, now)
                if used[m] + held[m] + ask >= levels[m]:
                    warned |= bit
            counters.append(counter)
            bit <<= 1
        for charge, counter in zip(plan.charges, counters, strict=True):
            held = counter.held
            for m in charge.spec.capped:  # a counter holds only what its limit caps
                held[m] += hold[m]
            counter.busy = True  # type: ignore[attr-defined]
        return Grant(plan.charges, counters, hold, want, now=now, warned=warned)

    async def _reserve_slow(self, plan: Plan, now: float) -> Grant | Denial:
        """:meth:`reserve` where some lease cannot pay: more taken from the store first (twice
        at most: other requests may take the new lease meanwhile), then the in-process
        decision (the clamp, the refusal, a shadow limit's note) against the leases."""
        for _ in range(2):
            asks = self._short(plan, plan.want_output, now)
            if not asks:
                break
            try:
                await self._acquire(asks, now)
            except (StoreError, OSError) as exc:
                return self._offline(plan, now, exc)
            now = self.clock()
        verdict = self._reserve_tight(plan, now)
        if isinstance(verdict, Grant):
            for counter in verdict.counters:
                assert isinstance(counter, LeaseCounter)
                counter.busy = True
        return verdict

    def _short(self, plan: Plan, want: int, now: float) -> list[_Ask]:
        """The counters whose lease cannot pay for the request with ``want`` output tokens,
        with what each lacks."""
        fixed, per = plan.fixed, plan.per_output
        ask = [fixed[m] + per[m] * want for m in range(6)]
        asks: list[_Ask] = []
        for charge in plan.charges:
            spec = charge.spec
            counter = self._counter(spec, charge.subject, now)
            need, floor = zero(), zero()
            for m in spec.capped:
                room = counter.lease[m] - counter.unflushed[m] - counter.held[m]
                if ask[m] - room > _EPS:
                    need[m] = ask[m] - room
                    least = fixed[m] + per[m] * min(want, spec.min_output_tokens)
                    floor[m] = max(0.0, least - room)
            if any(need):
                asks.append(_Ask(counter, spec, need, floor, ask))
        return asks

    async def extend(self, grant: Grant, extra: Vector) -> Extension:
        if not grant.counters:  # admitted uncounted (the store was unreachable)
            return Extension()
        asks: list[_Ask] = []
        for charge, counter in zip(grant.charges, grant.counters, strict=True):
            assert isinstance(counter, LeaseCounter)
            need = zero()
            for m in charge.spec.capped:
                lack = counter.unflushed[m] + counter.held[m] + extra[m] - counter.lease[m]
                if extra[m] > 0 and lack > _EPS:
                    need[m] = lack
            if any(need):
                asks.append(_Ask(counter, charge.spec, need, need, extra))
        if asks:
            try:
                await self._acquire(asks, self.clock())
            except (StoreError, OSError) as exc:  # an admitted stream goes on
                self._failed("extend", exc)
        return await super().extend(grant, extra)

    def settle(self, grant: Grant, actual: Vector) -> None:
        if grant.settled:
            return
        grant.settled = True
        if not grant.counters:  # admitted uncounted
            return
        now = self.clock()
        hold = grant.held
        for charge, counter in zip(grant.charges, grant.counters, strict=True):
            assert isinstance(counter, LeaseCounter)
            if counter.live:
                if now >= counter.end:
                    counter = self._counter(charge.spec, charge.subject, now)
                held = counter.held
                for m in charge.spec.capped:
                    held[m] -= hold[m]
            else:  # reset or dropped meanwhile: what was used goes to the live one
                counter = self._counter(charge.spec, charge.subject, now)
            for m in charge.spec.counted:
                counter.unflushed[m] += actual[m]
                counter.used[m] += actual[m]

    # ------------------------------------------------------------------------- the store

    async def _acquire(self, asks: list[_Ask], now: float) -> None:
        """More lease for each of ``asks``, in one transaction (see the module docstring)."""
        asks.sort(key=lambda a: a.counter.key)  # rows locked in one order: no deadlock
        done: list[_Looked] = []
        async with self.db.transaction() as conn:
            for ask in asks:
                looked = await self._look(conn, ask.counter, now)
                self._grow(looked, ask)
                await self._put_lease(conn, looked, now)
                done.append(looked)
        for looked in done:  # committed: now in memory too
            looked.apply()

    async def _look(self, conn: Conn, counter: LeaseCounter, now: float) -> _Looked:
        """In ``conn``'s transaction: what this process used of ``counter`` since its last
        look added to the counter's row (which locks the row until the transaction ends), and
        what the row and the other processes' leases then say."""
        start_ms = self._start_ms(counter)
        now_ms = int(now * 1000)
        flushed = list(counter.unflushed)
        lid, subject, window = counter.limit_id, counter.subject, counter.window
        used = await lease_repo.add_used(conn, lid, subject, window, start_ms, flushed, now_ms)
        shared = [*used, 0.0] if used is not None else zero()
        others = await lease_repo.other_leases(
            conn, lid, subject, self.holder, window, start_ms, now_ms
        )
        lease = [max(0.0, counter.lease[m] - flushed[m]) for m in range(6)]
        return _Looked(counter, start_ms, flushed, shared, others, lease)

    @staticmethod
    def _grow(looked: _Looked, ask: _Ask) -> None:
        """The lease grown, on each meter where it lacks, by what the request lacks and a
        chunk of whole requests of its size, when the cap has that much free; by all that is
        free when that pays only for the request clamped; else not at all (a remnant too
        small for this request stays free for another process's)."""
        spec, lease = ask.spec, looked.lease
        for m in spec.capped:
            need = ask.need[m]
            if need <= _EPS:
                continue
            free = spec.caps[m] - looked.shared[m] - looked.others[m] - lease[m]
            if free + _EPS >= need:
                unit = ask.unit[m]
                spare = min(spec.caps[m] * CHUNK_SHARE, (free - need) * CHUNK_FREE)
                chunk = unit * math.floor(spare / unit + _EPS) if unit > _EPS else 0.0
                lease[m] += need + chunk
            elif free > _EPS and free + _EPS >= ask.floor[m]:
                lease[m] += free

    @staticmethod
    def _start_ms(counter: Counter) -> int:
        return 0 if counter.end == math.inf else int(counter.start * 1000)

    async def _put_lease(self, conn: Conn, looked: _Looked, now: float) -> None:
        counter, lease = looked.counter, looked.lease
        if all(x <= _EPS for x in lease):
            await lease_repo.drop_lease(conn, counter.limit_id, counter.subject, self.holder)
            return
        await lease_repo.put_lease(
            conn,
            counter.limit_id,
            counter.subject,
            self.holder,
            counter.window,
            looked.start_ms,
            lease,
            int((now + LEASE_TTL_S) * 1000),
        )

    # --------------------------------------------------------------------------- the tick

    def _start(self) -> None:
        if self._ticker is None:
            self._ticker = asyncio.get_running_loop().create_task(self._tick_loop())

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                await self.tick()
            except (StoreError, OSError) as exc:
                self._failed("tick", exc)
            except Exception:
                log.exception("limit_lease_tick_failed")

    async def tick(self, *, release: str = "idle") -> None:
        """What this process used added to the shared rows and its leases renewed; what it
        holds beyond its requests in flight given back, of the counters no request took from
        since the last tick (``release="idle"``), of every counter (``"all"``) or of none
        (``"none"``); counters of ended windows that hold nothing forgotten."""
        now = self.clock()
        self.evict()
        work = [
            c
            for c in self._counters.values()
            if isinstance(c, LeaseCounter)
            and c.spec is not None
            and (any(c.unflushed) or any(x > _EPS for x in c.lease))
        ]
        if not work:
            return
        work.sort(key=lambda c: c.key)
        done: list[_Looked] = []
        async with self.db.transaction() as conn:
            for counter in work:
                looked = await self._look(conn, counter, now)
                if release == "all" or (release == "idle" and not counter.busy):
                    held = counter.held
                    looked.lease = [min(x, max(0.0, held[m])) for m, x in enumerate(looked.lease)]
                await self._put_lease(conn, looked, now)
                done.append(looked)
            await lease_repo.drop_expired_leases(conn, int((now - LEASE_TTL_S) * 1000))
        for looked in done:
            looked.apply()
            if release != "none":
                looked.counter.busy = False

    def evict(self) -> int:
        gone = [
            key
            for key, c in self._counters.items()
            if self.clock() >= c.end
            and all(abs(x) < _EPS for x in c.held)
            and not (isinstance(c, LeaseCounter) and any(c.unflushed))
        ]
        for key in gone:
            self._counters.pop(key).live = False
        return len(gone)

    # ---------------------------------------------------------------------------- failures

    def _failed(self, what: str, exc: BaseException) -> None:
        self.metrics.failed(what, exc)

    def _offline(self, plan: Plan, now: float, exc: BaseException) -> Grant:
        """The store did not answer: admit uncounted, or refuse if a limit fails closed."""
        self.metrics.offline(plan, exc, "the config store, which shares the limit counters, is")
        return Grant([], [], zero(), plan.want_output, now=now)

    # ---------------------------------------------------------------------------- admin

    async def counters(self, limit_id: str | None = None) -> list[Counter]:
        """The counters (of one limit) as the store has them, this process's use added first
        (what other processes used since their last tick is not in yet); ``held``: what this
        process's requests in flight hold."""
        try:
            await self.tick(release="none")
            return await self._stored(limit_id)
        except (StoreError, OSError) as exc:
            self._failed("counters", exc)
            raise StoreLeaseUnavailable(
                "the config store, which shares the limit counters, is unreachable"
            ) from exc

    async def _stored(self, limit_id: str | None) -> list[Counter]:
        now = self.clock()
        out: list[Counter] = []
        for lid, subject, window, start_ms, used in await lease_repo.stored_counters(
            self.db, limit_id
        ):
            local = self._counters.get((lid, subject))
            spec = local.spec if isinstance(local, LeaseCounter) else None
            window_s = spec.window_s if spec is not None else window_seconds(window)
            start, end = window_bounds(window, window_s, now)
            if start_ms != (0 if end == math.inf else int(start * 1000)):
                used = [0.0] * 5  # an ended window's
            held = list(local.held) if local is not None else zero()
            out.append(Counter(lid, subject, window, start, end, [*used, 0.0], held))
        return out

    async def reset(self, limit_id: str, subject: str | None = None) -> int:
        """Forget what was used, in the store (every process) and here; holds stay."""
        try:
            n = await lease_repo.zero_used(self.db, limit_id, subject)
        except (StoreError, OSError) as exc:
            self._failed("reset", exc)
            raise StoreLeaseUnavailable(
                "the config store, which shares the limit counters, is unreachable"
            ) from exc
        for (lid, subj), counter in self._counters.items():
            if lid == limit_id and (subject is None or subj == subject):
                assert isinstance(counter, LeaseCounter)
                counter.shared, counter.unflushed = zero(), zero()
                if counter.spec is not None:
                    counter.refresh(counter.spec)
        return n

    def forget(self, limit_ids: Iterable[str]) -> None:
        """Drop the counters of limits that no longer exist; their rows and leases go in the
        background."""
        gone = set(limit_ids)
        for key in [k for k in self._counters if k[0] in gone]:
            self._counters.pop(key).live = False
        asyncio.get_running_loop().create_task(self._forget(sorted(gone)))

    async def _forget(self, limit_ids: list[str]) -> None:
        try:
            await lease_repo.forget_limits(self.db, limit_ids)
        except (StoreError, OSError) as exc:
            self._failed("forget", exc)

    async def close(self) -> None:
        """What this process used added to the store and every lease given back."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
            self._ticker = None
        try:
            await self.tick(release="all")
        except (StoreError, OSError) as exc:
            self._failed("close", exc)
