"""The in-process backend's flattened hot path (agw/policy/limit_tally.py): a cached list of
charges keeps a tally of its counters, reused while it is valid and rebuilt when a counter is
reset, dropped, reloaded or its window rolls over, including for requests in flight across
the change. The clock is injected (the only thing replaced)."""

from __future__ import annotations

import asyncio

from pytest import approx

from agw.policy.limit_backend import InProcessBackend
from agw.policy.limit_grant import Grant
from agw.policy.limit_tally import Charges
from agw.policy.limit_types import COST, NO_CAP, REQUESTS, TOKENS, Charge, Counter, spec
from agw.store.limit_repo import CounterRow

DAY = 86400
NOON = 1_765_000_000.0 - 1_765_000_000.0 % DAY + DAY / 2
FIXED = [0.001, 10.0, 10.0, 0.0, 1.0, 1.0]  # $0.001 and 10 tokens of input, one request
PER = [0.0001, 1.0, 0.0, 1.0, 0.0, 0.0]  # $0.0001 a token of output


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def budget() -> Charges:
    dollars = spec("dollars", [1.0, NO_CAP, NO_CAP, NO_CAP, NO_CAP, NO_CAP], "1d", DAY)
    tokens = spec("tpm", [NO_CAP, 10_000, NO_CAP, NO_CAP, NO_CAP, NO_CAP], "1m", 60)
    inflight = spec("inflight", [NO_CAP] * 5 + [2], "lifetime", None)
    return Charges([Charge(dollars, "k"), Charge(tokens, "k"), Charge(inflight, "*")])


def admit(backend: InProcessBackend, charges: Charges, want: int = 100) -> Grant:
    grant = backend.reserve_now(charges, FIXED, PER, want)
    assert isinstance(grant, Grant), grant
    return grant


def counter(backend: InProcessBackend, limit_id: str, subject: str = "k") -> Counter:
    found = [c for c in backend._counters.values() if c.key == (limit_id, subject)]
    assert len(found) == 1
    return found[0]


def test_a_cached_list_keeps_its_tally_and_counts_exactly() -> None:
    backend = InProcessBackend(clock=Clock(NOON))
    charges = budget()
    first = admit(backend, charges)
    tally = charges.tally
    assert tally is not None and first.tally is tally
    second = admit(backend, charges)
    assert charges.tally is tally  # reused, not rebuilt
    assert counter(backend, "inflight", "*").held[5] == 2.0
    refused = backend.reserve_now(charges, FIXED, PER, 100)  # two in flight already
    assert not isinstance(refused, Grant)
    assert counter(backend, "dollars").held[COST] == approx(2 * (0.001 + 100 * 0.0001))
    first.settle(0.002, 10, 10)
    second.settle(0.003, 10, 20)
    dollars, tokens = counter(backend, "dollars"), counter(backend, "tpm")
    assert dollars.used[COST] == approx(0.005) and dollars.held[COST] == approx(0.0)
    assert tokens.used[TOKENS] == 50.0 and tokens.held[TOKENS] == 0.0
    assert dollars.used[REQUESTS] == tokens.used[REQUESTS] == 2.0
    assert counter(backend, "inflight", "*").held[5] == 0.0
    assert backend.dirty == {dollars, tokens, counter(backend, "inflight", "*")}


def test_a_reset_while_in_flight_rebuilds_the_tally_and_loses_nothing() -> None:
    backend = InProcessBackend(clock=Clock(NOON))
    charges = budget()
    admit(backend, charges).settle(0.5, 10, 10)
    in_flight = admit(backend, charges)
    old = charges.tally
    assert asyncio.run(backend.reset("dollars")) == 1
    in_flight.settle(0.25, 10, 10)  # settles into the reset counter (its hold dropped)
    dollars = counter(backend, "dollars")
    assert dollars.used[COST] == 0.25 and dollars.held[COST] == approx(0.0)
    admit(backend, charges).settle(0.25, 10, 10)
    assert charges.tally is not old  # the reset made the old one stale
    assert dollars.used[COST] == 0.5


def test_a_window_that_rolls_over_mid_flight_counts_the_answer_in_the_new_one() -> None:
    clock = Clock(NOON + 30 - NOON % 60)  # 30 s into a minute
    backend = InProcessBackend(clock=clock)
    charges = budget()
    in_flight = admit(backend, charges)
    clock.now += 45  # the next minute
    in_flight.settle(0.002, 10, 15)
    tokens = counter(backend, "tpm")
    assert tokens.start == clock.now - clock.now % 60  # rolled over
    assert tokens.used[TOKENS] == 25.0 and tokens.held[TOKENS] == 0.0
    grant = admit(backend, charges)
    assert grant.tally is not None and grant.tally is charges.tally
    assert grant.tally.end == tokens.end


def test_a_dropped_counter_sends_what_was_used_to_the_live_one() -> None:
    backend = InProcessBackend(clock=Clock(NOON))
    charges = budget()
    in_flight = admit(backend, charges)
    backend.forget(["dollars"])  # a config change drops the limit's counters
    in_flight.settle(0.003, 10, 10)
    assert counter(backend, "dollars").used[COST] == 0.003  # a new live counter has it
    assert counter(backend, "tpm").used[TOKENS] == 20.0
    # saved counters loaded over live ones (a restore) make the tally stale too
    row = CounterRow("tpm", "k", "1m", int((NOON - NOON % 60) * 1000), 0.0, 7, 0, 0, 1, 0)
    backend.load([row], {"tpm": charges[1].spec})
    admit(backend, charges).settle(0.0, 1, 2)
    assert counter(backend, "tpm").used[TOKENS] == 10.0  # 7 loaded + 3


def test_a_counter_that_cannot_pay_gives_back_what_the_others_took() -> None:
    backend = InProcessBackend(clock=Clock(NOON))
    charges = budget()
    admit(backend, charges, want=9_000)  # most of the minute's tokens
    refused = backend.reserve_now(charges, FIXED, PER, 2_000)  # tpm clamps to 990 (< 1024): no
    assert not isinstance(refused, Grant)
    assert counter(backend, "dollars").held[COST] == approx(0.001 + 9_000 * 0.0001)
    assert counter(backend, "inflight", "*").held[5] == 1.0


def test_a_window_changed_by_a_new_config_mid_flight_loses_nothing() -> None:
    backend = InProcessBackend(clock=Clock(NOON))
    old = budget()
    in_flight = admit(backend, old)
    hourly = spec("tpm", [NO_CAP, 10_000, NO_CAP, NO_CAP, NO_CAP, NO_CAP], "1h", 3600)
    new = Charges([old[0], Charge(hourly, "k"), old[2]])
    admit(backend, new).settle(0.0, 10, 10)  # the counter now counts per hour
    in_flight.settle(0.0, 10, 30)  # the answer admitted under the old config
    tokens = counter(backend, "tpm")
    assert tokens.window == "1h" and tokens.used[TOKENS] == 60.0
    assert tokens.held[TOKENS] == approx(0.0)


def test_a_requests_cap_counts_each_request_once() -> None:
    backend = InProcessBackend(clock=Clock(NOON))
    rpm = spec("rpm", [NO_CAP] * 4 + [2, NO_CAP], "1m", 60)
    charges = Charges([Charge(rpm, "k"), budget()[0]])
    admit(backend, charges).settle(0.001, 10, 1)
    admit(backend, charges).settle(0.001, 10, 1)
    assert not isinstance(backend.reserve_now(charges, FIXED, PER, 100), Grant)
    assert counter(backend, "rpm").used[REQUESTS] == 2.0
    assert counter(backend, "rpm").held[REQUESTS] == 0.0
    assert counter(backend, "dollars").used[REQUESTS] == 2.0  # counted, uncapped


def test_the_compiled_path_agrees_with_the_loops_on_random_charges() -> None:
    """Random limits, holds and answers on two backends, one reserving through the compiled
    code of a cached list (limit_compiled.py), the other through the generic loops: the same
    grants and refusals, the same RateLimit values, the same counters and marks after
    settling."""
    import random

    from agw.config.limits import Limit
    from agw.policy.limit_answers import announced
    from agw.policy.limit_table import announce_of, spec_of

    rng = random.Random(15)
    exceeded = 0
    for case in range(200):
        raw = []
        for n in range(rng.randint(1, 4)):
            lim: dict[str, object] = {"id": f"l{case}-{n}", "window": rng.choice(["1m", "1d"])}
            kind = rng.randrange(5)
            if kind == 0:
                lim["cost_usd"] = rng.choice([0.05, 0.5, 5.0])
            elif kind == 1:
                lim["tokens"] = {"total": rng.choice([500, 5_000, 50_000])}
            elif kind == 2:
                lim["requests"] = rng.choice([2, 5, 50])
            elif kind == 3:
                lim["concurrent"] = rng.choice([1, 3, 10])
            else:
                lim["cost_usd"], lim["requests"] = 1.0, 20
            if rng.random() < 0.3:
                lim["window"] = "lifetime"
            raw.append(lim)
        specs = [spec_of(Limit.model_validate(r)) for r in raw]
        announce = announce_of(specs)
        compiled_backend = InProcessBackend(clock=Clock(NOON))
        loop_backend = InProcessBackend(clock=Clock(NOON))
        cached = Charges([Charge(s, "k") for s in specs], announce)
        grants: list[tuple[Grant, Grant]] = []
        for _ in range(rng.randint(1, 12)):
            est_in = float(rng.choice([10, 100, 1_000]))
            fixed = [est_in * 1e-5, est_in, est_in, 0.0, 1.0, 1.0]
            per = [3e-5, 1.0, 0.0, 1.0, 0.0, 0.0]
            want = rng.choice([16, 256, 4_096])
            a = compiled_backend.reserve_now(cached, fixed, per, want)
            b = loop_backend.reserve_now([Charge(s, "k") for s in specs], fixed, per, want)
            assert isinstance(a, Grant) == isinstance(b, Grant), case
            if isinstance(a, Grant) and isinstance(b, Grant):
                assert (a.output, a.warned, a.clamped_by) == (b.output, b.warned, b.clamped_by)
                if a.shown:  # the compiled values are what announced() computes
                    assert announce.state % a.shown == announced(b, announce)[1][1], case
                    # and their head lines, unless a warning goes with them
                    assert announce.head is not None
                    assert a.head == (b"" if a.warned else announce.head % a.shown), case
                grants.append((a, b))
            if grants and rng.random() < 0.5:  # an answer ends
                a, b = grants.pop(rng.randrange(len(grants)))
                tin, tout = rng.randint(1, 2_000), rng.randint(0, 5_000)
                a.settle(tin * 1e-5 + tout * 3e-5, tin, tout)
                b.settle(tin * 1e-5 + tout * 3e-5, tin, tout)
                # the same limit marked that the answer took its counter past the cap
                assert (a.action, a.limit_id) == (b.action, b.limit_id), case
                exceeded += a.action == "exceeded"
        for spec_ in specs:
            x, y = counter(compiled_backend, spec_.id), counter(loop_backend, spec_.id)
            assert x.used == approx(y.used) and x.held == approx(y.held), case
    assert exceeded > 10  # answers past their hold and a cap were among them


def test_two_backends_charging_one_cached_list_keep_their_own_counters() -> None:
    """A cached list belongs to the limit table, which two apps built from one snapshot may
    share: each backend counts on its own counters, never through the other's tally."""
    first, second = InProcessBackend(clock=Clock(NOON)), InProcessBackend(clock=Clock(NOON))
    charges = budget()
    admit(first, charges).settle(0.25, 10, 10)
    admit(second, charges).settle(0.5, 10, 10)
    assert counter(first, "dollars").used[COST] == 0.25
    assert counter(second, "dollars").used[COST] == 0.5


def test_a_clock_stepped_back_after_a_rollover_loses_nothing() -> None:
    """A settle that rolls a counter over (the answer ended in the next window) makes the tally
    stale: a clock stepped back (NTP) must not make it valid again."""
    clock = Clock(NOON - NOON % 60 + 50)
    backend = InProcessBackend(clock=clock)
    charges = budget()
    in_flight = admit(backend, charges)
    clock.now += 11  # the next minute: the settle rolls the tpm counter over
    in_flight.settle(0.0, 10, 10)
    clock.now -= 1.5  # stepped back into the old minute
    admit(backend, charges).settle(0.0, 10, 20)
    assert counter(backend, "tpm").used[TOKENS] == 50.0  # both answers, in the live counter


def test_a_charge_that_caps_nothing_compiles() -> None:
    backend = InProcessBackend(clock=Clock(NOON))
    bare = spec("bare", [NO_CAP] * 6, "1d", DAY)  # counts requests, caps nothing
    charges = Charges([budget()[0], Charge(bare, "k")])
    admit(backend, charges).settle(0.001, 1, 1)
    assert counter(backend, "bare").used[REQUESTS] == 1.0
