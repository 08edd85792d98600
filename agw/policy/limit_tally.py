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

from dataclasses import dataclass

from agw.policy.limit_types import REQUESTS, Charge, Counter


class Charges(list[Charge]):
    """The charges of a request, shared by the requests of the same subjects (never to be
    changed), with the :class:`Tally` the in-process backend keeps of them."""

    __slots__ = ("tally",)

    def __init__(self, charges: list[Charge]) -> None:
        super().__init__(charges)
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


def tally_of(charges: list[Charge], counters: list[Counter], generation: int) -> Tally:
    """The tally of ``charges``, whose counters (in the current window) are ``counters``."""
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
    return Tally(generation, end, counters, tuple(checks), tuple(settles), tuple(requests))
