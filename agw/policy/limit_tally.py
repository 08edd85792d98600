"""The in-process backend's hot path (agw/policy/limit_backend.py), flattened: a request's
charges, as :func:`~agw.policy.limits.matching` found them for one set of subject values, keep a
:class:`Tally` of their counters, so that reserving and settling are one short loop over the
capped meters instead of a walk over charges, specs and counters.

A tally holds the counters' ``used`` and ``held`` lists themselves. It is valid while its
backend's ``generation`` is the one it was built in (the backend counts up whenever it drops,
replaces, resets or loads counters) and until the first of its counters' windows ends (a
window that rolls over starts a new ``used`` list): anything else rebuilds it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agw.policy.limit_compiled import Admit, Quick, compiled
from agw.policy.limit_grant import Grant
from agw.policy.limit_types import CONCURRENT, REQUESTS, Charge, Counter

if TYPE_CHECKING:
    from agw.policy.limit_table import Announce


class Charges(list[Charge]):
    """The charges of a request, shared by the requests of the same subjects (never to be
    changed), with the :class:`Tally` the in-process backend keeps of them. ``announce``: the
    route's, when these are all of its limits (the tally then finds its ``RateLimit`` values)."""

    __slots__ = ("announce", "tally")

    def __init__(self, charges: list[Charge], announce: Announce | None = None) -> None:
        super().__init__(charges)
        self.announce = announce
        self.tally: Tally | None = None


@dataclass(slots=True, eq=False)
class Tally:
    """One list of charges' counters, for :meth:`InProcessBackend.reserve_now` and
    :meth:`InProcessBackend.settle`."""

    generation: int  # the backend's, when built
    end: float  # the first of the counters' window ends
    counters: list[Counter]  # per charge
    # per capped meter of each charge: (used, held, meter, cap, warning level, the charge's bit)
    checks: tuple[tuple[list[float], list[float], int, float, float, int], ...]
    # per capped meter: (held, used, meter): the hold released and the use counted (in flight
    # is held only: an answer that ended settles 0 of it)
    settles: tuple[tuple[list[float], list[float], int], ...]
    requests: tuple[list[float], ...]  # the used lists that count requests uncapped
    # a cached list's: its admission and settle, compiled for its shape
    # (agw/policy/limit_compiled.py)
    admit: Admit | None = None
    quick: Quick | None = None


def tally_of(
    charges: list[Charge], counters: list[Counter], generation: int, clock: Callable[[], float]
) -> Tally:
    """The tally of ``charges``, whose counters (in the current window) are ``counters``, on
    the backend now at ``generation`` whose clock is ``clock``."""
    checks: list[tuple[list[float], list[float], int, float, float, int]] = []
    settles: list[tuple[list[float], list[float], int]] = []
    requests: list[list[float]] = []
    bit = 1
    for charge, counter in zip(charges, counters, strict=True):
        spec = charge.spec
        used, held = counter.used, counter.held
        for m in spec.capped:
            checks.append((used, held, m, spec.caps[m], spec.levels[m], bit))
            settles.append((held, used, m))
        if REQUESTS not in spec.capped:
            requests.append(used)
        bit <<= 1
    end = min((c.end for c in counters), default=float("inf"))
    tally = Tally(generation, end, counters, tuple(checks), tuple(settles), tuple(requests))
    if type(charges) is Charges:  # kept: worth compiling (once per shape, then a closure)
        tally.admit, tally.quick = _compiled(charges, counters, tally, clock)
    return tally


def _compiled(
    charges: Charges, counters: list[Counter], tally: Tally, clock: Callable[[], float]
) -> tuple[Admit, Quick]:
    meters: list[int] = []
    owners: list[int] = []
    warns: list[bool] = []
    caps: list[float] = []
    levels: list[float] = []
    where: dict[tuple[int, int], int] = {}  # (charge index, meter): check index
    for i, charge in enumerate(charges):
        spec = charge.spec
        for m in spec.capped:
            where[i, m] = len(meters)
            meters.append(m)
            owners.append(i)
            warns.append(not math.isinf(spec.levels[m]))
            caps.append(spec.caps[m])
            levels.append(spec.levels[m])
    apart = [i for i, c in enumerate(charges) if REQUESTS not in c.spec.capped]
    slots: list[tuple[int, int]] = []
    scales: list[float] = []
    announce = charges.announce
    head = None  # the route's RateLimit head lines, the values from these slots
    if announce is not None and announce.count == len(charges):
        head = announce.head if announce.slots else None
        for i, m, _, scale, timed in announce.slots:
            slots.append((where[i, m], i if timed and m != CONCURRENT else -1))
            scales.append(scale)
    shape = (len(charges), tuple(meters), tuple(owners), tuple(warns), tuple(apart), tuple(slots))
    return compiled(
        shape,
        [c.used for c in counters],
        [c.held for c in counters],
        caps,
        levels,
        [c.end for c in counters],
        scales,
        (tally.generation, tally.end, clock, charges, counters, tally, Grant, head),
    )
