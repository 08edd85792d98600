"""The hot path of admission on its own (agw/policy/limit_answers.py, limit_backend.py): the
RateLimit headers built from a route's compiled :class:`Announce` say exactly what the general
builder says, for every window and meter, shadow limits, the soft warning and the clamp; and a
reservation that fails on a later counter gives back what it held on the earlier ones."""

from __future__ import annotations

from typing import Any

import pytest

from agw.config.limits import Limit
from agw.policy.limit_answers import announced, headers_of
from agw.policy.limit_backend import InProcessBackend
from agw.policy.limit_grant import Grant
from agw.policy.limit_table import CompiledLimit, route_limits, spec_of
from agw.policy.limit_types import CONCURRENT, COST, TOKENS, Charge

NOW = 1_796_625_660.25  # 2026-12-07, mid-minute


def compiled(*limits: dict[str, Any]) -> list[CompiledLimit]:
    out = []
    for raw in limits:
        lim = Limit.model_validate(raw)
        empty: frozenset[str] = frozenset()
        out.append(
            CompiledLimit(
                spec_of(lim), lim.subject, empty, empty, empty, empty, empty, empty, None, True
            )
        )
    return out


def reserve(
    backend: InProcessBackend, lims: list[CompiledLimit], want: int, est_in: float = 30.0
) -> Grant:
    charges = [Charge(lim.spec, "team-a") for lim in lims]
    fixed = [est_in * 1e-6, est_in, est_in, 0.0, 1.0, 1.0]
    verdict = backend.reserve_now(charges, fixed, [2e-6, 1.0, 0.0, 1.0, 0.0, 0.0], want)
    assert isinstance(verdict, Grant)
    return verdict


LIMITS: list[dict[str, Any]] = [
    {"id": "dollars", "window": "1d", "cost_usd": 0.01},
    {
        "id": "tpm",
        "window": "1m",
        "tokens": {"total": 2000, "output": 1500},
        "min_output_tokens": 10,
    },
    {"id": "monthly", "window": "month", "requests": 50},
    {"id": "lifetime", "window": "lifetime", "tokens": {"input": 10**6}},
    {"id": "in-flight", "subject": "global", "concurrent": 8},
    {"id": "shadow", "window": "1h", "requests": 2, "enforce": False},
    {"id": 'odd "name" 100%', "window": "30s", "requests": 1000},
]


@pytest.mark.parametrize("count", [1, 3, len(LIMITS)])
def test_the_compiled_headers_say_what_the_general_builder_says(count: int) -> None:
    lims = compiled(*LIMITS[:count])
    announce = route_limits(tuple(lims)).announce
    backend = InProcessBackend(clock=lambda: NOW)
    for want in (10, 200, 400, 600, 900):  # on the way to the warning, then the clamp
        grant = reserve(backend, lims, want)
        assert announced(grant, announce) == headers_of(grant)
    names = [name for name, _ in headers_of(grant)]
    if count >= 2:
        assert b"x-agw-limit-warning" in names and b"x-agw-max-tokens" in names
        assert grant.clamped_by is not None


def test_only_shadow_limits_announce_nothing_but_their_warning() -> None:
    lims = compiled({"id": "shadow", "window": "1h", "requests": 2, "enforce": False})
    announce = route_limits(tuple(lims)).announce
    backend = InProcessBackend(clock=lambda: NOW)
    for _ in range(3):
        grant = reserve(backend, lims, 10)
        assert announced(grant, announce) == headers_of(grant)
        assert all(name != b"ratelimit" for name, _ in announced(grant, announce))


def test_a_later_counter_that_cannot_pay_releases_what_the_earlier_ones_held() -> None:
    roomy, tight = compiled(
        {"id": "roomy", "window": "1d", "cost_usd": 100},
        {"id": "tight", "window": "1m", "tokens": {"total": 100}, "min_output_tokens": 1},
    )
    backend = InProcessBackend(clock=lambda: NOW)
    grant = reserve(backend, [roomy, tight], want=500, est_in=30.0)
    assert grant.output == 70 and grant.clamped_by == "tight"  # 100 tokens - 30 of input
    held = {c.limit_id: c.held for c in grant.counters}
    assert held["roomy"][COST] == pytest.approx(30e-6 + 70 * 2e-6)  # the clamped hold, once
    assert held["tight"][TOKENS] == 100.0
    backend.settle(grant, [0.0] * 6)
    assert all(x == 0.0 for c in grant.counters for x in c.held)
    # a refusal holds nothing anywhere
    grant = reserve(backend, [roomy, tight], want=10, est_in=60.0)
    denied = backend.reserve_now(
        [Charge(roomy.spec, "team-a"), Charge(tight.spec, "team-a")],
        [60e-6, 60.0, 60.0, 0.0, 1.0, 1.0],
        [2e-6, 1.0, 0.0, 1.0, 0.0, 0.0],
        10,
    )
    assert not isinstance(denied, Grant)
    assert held["roomy"][COST] == pytest.approx(60e-6 + 10 * 2e-6)  # the first grant's only
    assert held["tight"][TOKENS] == 70.0
    assert held["roomy"][CONCURRENT] == 0.0  # a dollar limit holds no requests in flight


@pytest.mark.parametrize("est_in", [0.0, 12.0, 750.0])
def test_a_streams_room_never_skips_a_look_it_needs(est_in: float) -> None:
    """``Grant.room`` (the admission): while a stream's output stays within it, ``need`` asks
    nothing; one token past it (plus the one of margin), ``need`` asks for more."""
    lims = compiled(
        {"id": "dollars", "window": "1d", "cost_usd": 10},
        {"id": "tpm", "window": "1m", "tokens": {"total": 10**6}},
    )
    backend = InProcessBackend(clock=lambda: NOW)
    charges = [Charge(lim.spec, "team-a") for lim in lims]
    fixed = [est_in * 3e-6, est_in, est_in, 0.0, 1.0, 1.0]
    per = [1.5e-5, 1.0, 0.0, 1.0, 0.0, 0.0]
    admission = backend.reserve_now(charges, fixed, per, 300)
    assert isinstance(admission, Grant)
    for reported in (0, int(est_in), int(est_in) + 40, int(est_in) + 10**5):
        room = admission.room(reported)
        if room < 0:
            assert admission.need(reported, 0) is not None
            continue
        if reported <= est_in:  # the estimate holds: the whole output cap, less the margin
            assert 298 <= room <= 299
        for tout in range(0, int(room) + 1):
            assert admission.need(reported, tout) is None, (reported, tout, room)
        assert admission.need(reported, int(room) + 2) is not None


def test_an_id_past_printable_ascii_is_left_out_of_the_fields_not_the_head_broken() -> None:
    """The RateLimit items are structured-field strings (printable ASCII): what an id has
    beyond that (a tab, non-ASCII, a line break in an id stored before ids were checked) is
    left out of the item's name, and the fields stay well formed."""
    from agw.config.base import FROM_STORE
    from agw.policy.limit_table import announce_of

    lim = Limit.model_validate({"id": "Zürich\trpm\r\nx", "requests": 5}, context=FROM_STORE)
    announce = announce_of([spec_of(lim)])
    assert announce.policy == (b"ratelimit-policy", b'"Zrichrpmx";q=5;qu="requests"')
    assert announce.head == (
        b'ratelimit-policy: "Zrichrpmx";q=5;qu="requests"\r\nratelimit: "Zrichrpmx";r=%d\r\n'
    )
