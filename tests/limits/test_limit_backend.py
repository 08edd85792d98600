"""The limit backends on their own (agw/policy/limit_backend.py, limit_redis.py,
limit_lease.py): windows and their rollover, the clamp when several limits bind, shadow limits,
streams taking more and settling, each on the in-process backend, on Redis (skipped when the
test Redis is unreachable) and on leases from a SQLite store; eviction and reloading saved
counters in process. The clock is injected (the only thing replaced)."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Coroutine, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from agw.policy.limit_backend import InProcessBackend
from agw.policy.limit_grant import Grant
from agw.policy.limit_lease import LeaseBackend
from agw.policy.limit_redis import RedisBackend
from agw.policy.limit_types import (
    CONCURRENT,
    COST,
    NO_CAP,
    OUTPUT,
    REQUESTS,
    Charge,
    Denial,
    LimitBackend,
    LimitSpec,
    Plan,
    spec,
    window_bounds,
)
from agw.store.engine import Store, open_store
from agw.store.limit_repo import CounterRow
from tests.support.engines import REDIS_URL, redis_prefix

DAY = 86400


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def caps(**kw: float) -> list[float]:
    out = [NO_CAP] * 6
    names = {"cost": COST, "output": OUTPUT, "requests": REQUESTS, "concurrent": CONCURRENT}
    for name, value in kw.items():
        out[names[name]] = value
    return out


def plan(specs: list[LimitSpec], want: int = 0, cost_in: float = 0.0, per: float = 0.0) -> Plan:
    per_output = [per, 1.0 if per else 0.0, 0.0, 1.0 if per else 0.0, 0.0, 0.0]
    return Plan([Charge(s, "k") for s in specs], [cost_in, 0, 0, 0, 1, 1], per_output, want)


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


class Harness:
    """One kind of backend, every call of a test on one event loop (a Redis client's
    connections belong to the loop that opened them)."""

    def __init__(self, prefix: str | None, stores: Path | None = None) -> None:
        self.prefix = prefix  # None: in process (or leased from a store in ``stores``)
        self.stores = stores
        self.runner = asyncio.Runner()
        self.made: list[RedisBackend | LeaseBackend] = []
        self.dbs: list[Store] = []

    def make(self, clock: Clock) -> LimitBackend:
        if self.stores is not None:  # each backend a store of its own
            db = self.run(open_store(self.stores / f"{len(self.dbs)}.db"))
            self.dbs.append(db)
            lease = LeaseBackend(db, clock=clock)
            self.made.append(lease)
            return lease
        if self.prefix is None:
            return InProcessBackend(clock)
        # each backend its own keys, as each in-process backend has its own counters
        backend = RedisBackend(REDIS_URL, prefix=f"{self.prefix}{len(self.made)}:", clock=clock)
        self.made.append(backend)
        return backend

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(coro)

    def settle(self, backend: LimitBackend, grant: Grant, actual: list[float]) -> None:
        """Settles and waits until the counters have it (Redis settles in the background)."""
        self.run(self._settle(backend, grant, actual))

    async def _settle(self, backend: LimitBackend, grant: Grant, actual: list[float]) -> None:
        backend.settle(grant, actual)
        if isinstance(backend, RedisBackend):
            await backend.flush()

    def close(self) -> None:
        for backend in self.made:
            self.run(backend.close())
        for db in self.dbs:
            self.run(db.close())
        self.runner.close()


@pytest.fixture(params=["memory", "redis", "lease"])
def h(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    if request.param != "redis":
        harness = Harness(None, tmp_path if request.param == "lease" else None)
        yield harness
        harness.close()
        return
    with redis_prefix() as prefix:
        harness = Harness(prefix)
        yield harness
        harness.close()


def test_fixed_windows_are_utc_aligned_and_a_month_is_the_calendar_month() -> None:
    t = datetime(2026, 12, 6, 21, 7, 30, tzinfo=UTC).timestamp()
    start, end = window_bounds("1d", DAY, t)
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 12, 6, tzinfo=UTC)
    assert end - start == DAY
    start, end = window_bounds("month", None, t)
    assert datetime.fromtimestamp(start, UTC) == datetime(2026, 12, 1, tzinfo=UTC)
    assert datetime.fromtimestamp(end, UTC) == datetime(2027, 1, 1, tzinfo=UTC)
    assert window_bounds("lifetime", None, t) == (0.0, math.inf)


def test_a_new_window_forgets_what_was_used_but_keeps_what_is_held(h: Harness) -> None:
    clock = Clock(1_000_000 * 60 + 10)
    backend = h.make(clock)
    rpm = spec("rpm", caps(requests=2), "1m", 60)
    held = h.run(backend.reserve(plan([rpm])))
    assert isinstance(held, Grant)
    done = h.run(backend.reserve(plan([rpm])))
    assert isinstance(done, Grant)
    h.settle(backend, done, [0, 0, 0, 0, 1, 0])
    refused = h.run(backend.reserve(plan([rpm])))
    assert isinstance(refused, Denial) and refused.retry_after == 50
    clock.now += 55  # the next minute
    again = h.run(backend.reserve(plan([rpm])))
    assert isinstance(again, Grant)  # 1 held from before + this one
    assert isinstance(h.run(backend.reserve(plan([rpm]))), Denial)
    h.settle(backend, held, [0, 0, 0, 0, 1, 0])  # counted in the window it ended in
    (counter,) = h.run(backend.counters("rpm"))
    assert counter.used[REQUESTS] == 1 and counter.held[REQUESTS] == 1


def test_the_clamp_takes_what_every_limit_affords_and_the_binding_floor(h: Harness) -> None:
    backend = h.make(Clock(5.0))
    small = spec("small", caps(cost=0.5), "lifetime", None, min_output_tokens=100)
    big = spec("big", caps(cost=10.0), "lifetime", None, min_output_tokens=400)
    grant = h.run(backend.reserve(plan([small, big], want=4096, cost_in=0.001, per=0.001)))
    assert isinstance(grant, Grant) and grant.output == 499 and grant.clamped_by == "small"
    h.settle(backend, grant, [0.2, 0, 0, 0, 1, 0])
    # small now affords 299 (< big's floor of 400, but big does not bind): still clamped
    grant = h.run(backend.reserve(plan([small, big], want=4096, cost_in=0.001, per=0.001)))
    assert isinstance(grant, Grant) and grant.output == 299
    h.settle(backend, grant, [0.25, 0, 0, 0, 1, 0])
    # 0.05 left: 49 tokens, under small's floor: refused by small, with what is left
    refused = h.run(backend.reserve(plan([small, big], want=4096, cost_in=0.001, per=0.001)))
    assert isinstance(refused, Denial) and refused.spec.id == "small"
    assert refused.used == pytest.approx(0.45) and refused.retry_after is None


def test_two_binding_limits_refuse_below_the_higher_floor(h: Harness) -> None:
    backend = h.make(Clock(5.0))
    a = spec("a", caps(output=300), "lifetime", None, min_output_tokens=10)
    b = spec("b", caps(output=1000), "lifetime", None, min_output_tokens=500)
    grant = h.run(backend.reserve(plan([a, b], want=800, per=0.001)))  # only a binds
    assert isinstance(grant, Grant) and grant.output == 300
    h.settle(backend, grant, [0, 0, 0, 0, 1, 0])
    both = h.run(backend.reserve(plan([a, b], want=1200, per=0.001)))  # both bind: floor 500
    assert isinstance(both, Denial) and both.spec.id == "a"


def test_a_shadow_limit_never_refuses_but_is_named(h: Harness) -> None:
    backend = h.make(Clock(5.0))
    shadow = spec("watch", caps(requests=1), "lifetime", None, enforce=False)
    first = h.run(backend.reserve(plan([shadow])))
    second = h.run(backend.reserve(plan([shadow])))
    assert isinstance(first, Grant) and first.shadow is None
    assert isinstance(second, Grant) and second.shadow == "watch"


def test_extend_cut_and_finish(h: Harness) -> None:
    backend = h.make(Clock(5.0))
    cut = spec("cut", caps(output=100), "lifetime", None, on_exceed="cut", min_output_tokens=1)
    fin = spec("fin", caps(output=50), "lifetime", None, min_output_tokens=1)
    grant = h.run(backend.reserve(plan([cut], want=40, per=0.001)))
    assert isinstance(grant, Grant)
    ok = h.run(backend.extend(grant, [0, 0, 0, 50, 0, 0]))
    assert ok.cut_by is None  # 90 of 100
    stop = h.run(backend.extend(grant, [0, 0, 0, 20, 0, 0]))
    assert stop.cut_by is not None and stop.cut_by.spec.id == "cut"
    assert grant.held[OUTPUT] == 90  # nothing taken by the refused extension
    grant2 = h.run(backend.reserve(plan([fin], want=40, per=0.001)))
    assert isinstance(grant2, Grant)
    over = h.run(backend.extend(grant2, [0, 0, 0, 30, 0, 0]))
    assert over.cut_by is None and over.exceeded == ("fin",)
    h.settle(backend, grant2, [0, 70, 0, 70, 1, 0])
    assert isinstance(h.run(backend.reserve(plan([fin], want=1, per=0.001))), Denial)


def test_settling_twice_counts_once_and_concurrency_is_released(h: Harness) -> None:
    backend = h.make(Clock(5.0))
    par = spec("par", caps(concurrent=1, requests=10), "lifetime", None)
    grant = h.run(backend.reserve(plan([par])))
    assert isinstance(grant, Grant)
    denied = h.run(backend.reserve(plan([par])))
    assert isinstance(denied, Denial) and denied.meter == CONCURRENT and denied.retry_after == 1
    h.settle(backend, grant, [0, 0, 0, 0, 1, 0])
    h.settle(backend, grant, [0, 0, 0, 0, 1, 0])
    (counter,) = h.run(backend.counters("par"))
    assert counter.used[REQUESTS] == 1 and counter.held == [0.0] * 6


def test_ended_windows_are_evicted_and_saved_rows_reload_only_in_their_window() -> None:
    clock = Clock(10 * DAY + 100)
    backend = InProcessBackend(clock)
    daily = spec("daily", caps(requests=5), "1d", DAY)
    life = spec("life", caps(requests=5), "lifetime", None)
    for s in (daily, life):
        g = run(backend.reserve(plan([s])))
        assert isinstance(g, Grant)
        backend.settle(g, [0, 0, 0, 0, 1, 0])
    rows, _ = backend.take_changes()
    assert {(r.limit_id, r.window_start) for r in rows} == {("daily", 10 * DAY * 1000), ("life", 0)}
    fresh = InProcessBackend(Clock(10 * DAY + 200))
    assert fresh.load(rows, {"daily": daily, "life": life}) == 2
    tomorrow = InProcessBackend(Clock(11 * DAY + 5))
    assert tomorrow.load(rows, {"daily": daily, "life": life}) == 1  # yesterday's is over
    changed = spec("daily", caps(requests=5), "1h", 3600)
    assert InProcessBackend(Clock(10 * DAY + 200)).load(rows, {"daily": changed}) == 0
    clock.now = 11 * DAY + 5
    assert backend.evict() == 1
    _, deleted = backend.take_changes()
    assert deleted == [("daily", "k")]
    assert [c.limit_id for c in run(backend.counters())] == ["life"]
    assert isinstance(rows[0], CounterRow)
